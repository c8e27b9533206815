"""Ranking of vector store search results: the [0, 1] scores and the hybrid fusions."""

from __future__ import annotations

import pytest

from fnstack.api.vector_io import ScoredChunk
from fnstack.api.vector_stores import RankingOptions
from fnstack.ranking import rank, rewrite


def _hits(*pairs: tuple[str, float]) -> list[ScoredChunk]:
    return [ScoredChunk(chunk_id=c, file_id="f", content=c, score=s) for c, s in pairs]


def test_vector_scores_are_clamped_and_queries_merged() -> None:
    ranked = rank([_hits(("a", 0.9), ("b", -0.2)), _hits(("b", 0.5))], [], "vector",
                  RankingOptions())
    assert [(c.chunk_id, s) for c, s in ranked] == [("a", 0.9), ("b", 0.5)]


def test_keyword_scores_are_normalised_by_the_best() -> None:
    ranked = rank([], [_hits(("a", 8.0), ("b", 2.0))], "keyword", RankingOptions())
    assert [(c.chunk_id, s) for c, s in ranked] == [("a", 1.0), ("b", 0.25)]


def test_rrf_rewards_agreement_and_scores_one_for_first_in_both() -> None:
    vector = [_hits(("a", 0.9), ("b", 0.8), ("c", 0.1))]
    keyword = [_hits(("a", 5.0), ("c", 4.0))]
    ranked = rank(vector, keyword, "hybrid", RankingOptions(ranker="rrf", impact_factor=60))
    assert ranked[0][0].chunk_id == "a" and ranked[0][1] == pytest.approx(1.0)
    # c is in both lists, b only in one: c climbs above b.
    assert [c.chunk_id for c, _ in ranked] == ["a", "c", "b"]
    assert all(0 < s <= 1 for _, s in ranked)


def test_weighted_fusion_follows_alpha() -> None:
    vector = [_hits(("a", 0.9), ("b", 0.3))]
    keyword = [_hits(("b", 9.0), ("a", 1.0))]
    by_vector = rank(vector, keyword, "hybrid", RankingOptions(ranker="weighted", alpha=1.0))
    by_keyword = rank(vector, keyword, "hybrid", RankingOptions(ranker="weighted", alpha=0.0))
    assert by_vector[0][0].chunk_id == "a" and by_keyword[0][0].chunk_id == "b"


def test_rewrite_keeps_the_content_words() -> None:
    assert rewrite("How do I reset my password?") == "reset password"
    assert rewrite("what is it?") == "what is it?"  # nothing left: the query as asked
