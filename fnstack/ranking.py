"""Search-result ranking for vector stores: scores in [0, 1], hybrid fusion, rewrites.

- vector: cosine similarity, clamped at 0;
- keyword: BM25 normalised by the best hit of the query (the best scores 1);
- hybrid: reciprocal rank fusion scaled so a chunk first in both lists scores 1
  (``1 / (impact_factor + rank)`` summed), or a weighted sum of the normalised scores
  (``alpha * vector + (1 - alpha) * keyword``).

Several queries (a list ``query``): each chunk once, with its best score.
"""

from __future__ import annotations

import re

from fnstack.api.vector_io import ScoredChunk
from fnstack.api.vector_stores import RankingOptions

__all__ = ["merge", "normalised", "rank", "rewrite"]

_STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "could", "do", "does", "did",
    "for", "from", "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "please",
    "tell", "the", "this", "that", "to", "was", "what", "when", "where", "which", "who", "why",
    "will", "with", "would", "you", "your", "about", "find", "show", "give", "list",
])


def rewrite(query: str) -> str:
    """A search query from a question: the content words, in order (no model call)."""
    words = re.findall(r"[\w'-]+", query.lower())
    kept = [w for w in words if w not in _STOPWORDS]
    return " ".join(kept) or query


def rank(vector: list[list[ScoredChunk]], keyword: list[list[ScoredChunk]],
          mode: str, ranking: RankingOptions) -> list[tuple[ScoredChunk, float]]:
    """One ranking with scores in [0, 1], best first."""
    if mode == "vector":
        return merge([[(c, max(0.0, min(1.0, c.score))) for c in hits] for hits in vector])
    if mode == "keyword":
        return merge([normalised(hits) for hits in keyword])
    vec = merge([[(c, c.score) for c in hits] for hits in vector])
    kw = merge([[(c, c.score) for c in hits] for hits in keyword])
    chunks = {c.chunk_id: c for c, _ in vec + kw}
    fused: dict[str, float] = {}
    if ranking.ranker == "weighted":
        vn = dict((c.chunk_id, s) for c, s in normalised([c for c, _ in vec]))
        kn = dict((c.chunk_id, s) for c, s in normalised([c for c, _ in kw]))
        for cid in chunks:
            fused[cid] = ranking.alpha * vn.get(cid, 0.0) + (1 - ranking.alpha) * kn.get(cid, 0.0)
    else:
        # Reciprocal rank fusion, scaled so a chunk first in both lists scores 1.
        top = 2.0 / (ranking.impact_factor + 1)
        for ranked in (vec, kw):
            for rank, (c, _) in enumerate(ranked, start=1):
                fused[c.chunk_id] = fused.get(c.chunk_id, 0.0) + (
                    1.0 / (ranking.impact_factor + rank)) / top
    return sorted(((chunks[cid], s) for cid, s in fused.items()), key=lambda t: -t[1])


def normalised(hits: list[ScoredChunk]) -> list[tuple[ScoredChunk, float]]:
    if not hits:
        return []
    best = max(c.score for c in hits)
    if best <= 0:
        return [(c, 0.0) for c in hits]
    return [(c, max(0.0, c.score) / best) for c in hits]


def merge(lists: list[list[tuple[ScoredChunk, float]]]) -> list[tuple[ScoredChunk, float]]:
    """Several queries' hits: each chunk once, with its best score."""
    best: dict[str, tuple[ScoredChunk, float]] = {}
    for hits in lists:
        for c, s in hits:
            if c.chunk_id not in best or s > best[c.chunk_id][1]:
                best[c.chunk_id] = (c, s)
    return sorted(best.values(), key=lambda t: -t[1])
