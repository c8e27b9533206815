"""Sentences per second: inline::onnx-embeddings (onnxruntime) vs the torch reference.

    python bench/bench_embeddings.py [--threads N] [--rounds R] [--sentences N]

Both sides get the same thread count, the same tokenizer (truncation at 256) and the
same batches: sentences sorted by length, padded to the longest in each batch, as the
provider does. Figures per batch size:

- torch:     the eager torch BERT (the reference the tests compare against), inference mode;
- ort graph: the provider's onnxruntime session alone, on the same padded batches;
- provider:  `OnnxEmbeddingsProvider.embeddings()` end to end (tokenize, sort, run,
             build the OpenAI response) — what a request pays.

Rounds alternate torch and onnxruntime so both see the same load from whatever else
runs on the machine; the best round is reported (the least disturbed), the median next
to it. ``--threads 1 --cpu-time`` gives figures a busy machine does not distort.

"ort graph" is the like-for-like column: the same padded batches as torch. "provider"
batches each request of 32 on its own (sorted within it), so it pads more than the
globally sorted batches of the other columns. "int8 graph" is the opt-in quantized
graph (``int8: true``), approximate: its cosine to the reference is printed too.
The graphs are exported into the cache first if missing (needs torch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tokenizers import Tokenizer

from fnstack.api.inference import EmbeddingRequest
from fnstack.spec import ProviderContext
from providers.inference.onnx_embeddings import (
    OnnxEmbeddingsConfig,
    OnnxEmbeddingsProvider,
    bundled_model_dir,
    create,
    default_cache_dir,
)
from providers.inference.onnx_export import load_sentence_bert

WORDS = [
    "the",
    "a",
    "of",
    "serverless",
    "function",
    "cold",
    "start",
    "embedding",
    "vector",
    "search",
    "retrieval",
    "model",
    "layer",
    "query",
    "document",
    "user",
    "password",
    "reset",
    "invoice",
    "shipping",
    "order",
    "refund",
    "policy",
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
    "café",
    "naïve",
    "résumé",
    "東京",
    "données",
    "über",
    "straße",
    "temperature",
    "weather",
    "forecast",
    "tomorrow",
    "python",
    "lambda",
    "region",
    "bucket",
    "table",
    "queue",
    "stream",
    "token",
]


def corpus(n: int, seed: int = 0) -> list[str]:
    """Sentences of 4 to 40 words: the spread of real search queries and chunks."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 40))) + "." for _ in range(n)]


def padded_batches(tok: Tokenizer, texts: list[str], bs: int) -> list[tuple[Any, Any]]:
    seqs = sorted((e.ids for e in tok.encode_batch(texts)), key=len, reverse=True)
    out = []
    for i in range(0, len(seqs), bs):
        chunk = seqs[i : i + bs]
        ids = np.zeros((len(chunk), len(chunk[0])), dtype=np.int64)
        for row, s in enumerate(chunk):
            ids[row, : len(s)] = s
        out.append((ids, (ids != 0).astype(np.int64)))
    return out


CLOCK = time.perf_counter


def timed(fn: Callable[..., int], *args: Any) -> float:
    start = CLOCK()
    n = fn(*args)
    return n / (CLOCK() - start)


async def make_provider(threads: int, int8: bool) -> OnnxEmbeddingsProvider:
    config = OnnxEmbeddingsConfig(
        intra_op_threads=threads, max_batch_size=32, int8=int8, preload=True
    )
    return await create(config, ProviderContext(provider_id="bench", cache_dir=default_cache_dir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=256, help="per round at batch 32")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 graph column")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="rate per CPU-second of this process instead of per wall second: with "
        "--threads 1 it measures the kernels' efficiency even on a busy machine",
    )
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)

    provider = asyncio.run(make_provider(args.threads, int8=False))
    quantized = None if args.no_int8 else asyncio.run(make_provider(args.threads, int8=True))
    model = load_sentence_bert()
    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.no_padding()

    texts = corpus(args.sentences)
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    print(
        f"graph {provider.graph_path}\n"
        f"threads {args.threads}, {len(texts)} sentences of {min(lengths)}-{max(lengths)} "
        f"tokens (mean {statistics.mean(lengths):.0f}), {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus, torch {torch.__version__}"
    )

    def run_torch(batches: list[tuple[Any, Any]]) -> int:
        with torch.inference_mode():
            for ids, mask in batches:
                model(torch.from_numpy(ids), torch.from_numpy(mask))
        return sum(len(ids) for ids, _ in batches)

    def run_graph(p: OnnxEmbeddingsProvider, batches: list[tuple[Any, Any]]) -> int:
        assert p._runtime is not None
        for ids, mask in batches:
            p._runtime.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return sum(len(ids) for ids, _ in batches)

    def run_provider(p: OnnxEmbeddingsProvider, sentences: list[str], bs: int) -> int:
        async def go() -> None:
            for i in range(0, len(sentences), bs):
                chunk = sentences[i : i + bs]
                await p.embeddings(EmbeddingRequest(model=p.model_id, input=chunk))

        asyncio.run(go())
        return len(sentences)

    # How far each graph is from the reference, on the benchmark's own sentences.
    full = padded_batches(tok, texts, 32)
    with torch.inference_mode():
        ref = np.concatenate(
            [model(torch.from_numpy(i), torch.from_numpy(m)).numpy() for i, m in full]
        )
    for label, p in (("float32", provider), ("int8", quantized)):
        if p is not None and p._runtime is not None:
            got = np.concatenate(
                [
                    p._runtime.session.run(None, {"input_ids": i, "attention_mask": m})[0]
                    for i, m in full
                ]
            )
            cos = (got * ref).sum(axis=1)
            print(f"{label} graph vs torch: cosine min {cos.min():.6f}, mean {cos.mean():.6f}")

    columns = ["torch", "ort graph", "provider", "int8 graph"][: 3 if quantized is None else 4]
    unit = "sentences per CPU-second" if args.cpu_time else "sentences/s"
    print(f"\n{unit}, best of rounds (median in brackets)")
    print(f"{'batch':>5} " + " ".join(f"{c:>16}" for c in columns) + f" {'graph/torch':>12}")
    n_single = max(16, len(texts) // 4)  # batch 1 is slow for torch: fewer sentences
    for bs, sentences in ((1, texts[:n_single]), (32, texts)):
        batches = padded_batches(tok, sentences, bs)
        run_torch(batches[:2])  # warm-up: allocators, kernel selection
        run_graph(provider, batches[:2])
        figures: dict[str, list[float]] = {c: [] for c in columns}
        for _ in range(args.rounds):
            figures["torch"].append(timed(run_torch, batches))
            figures["ort graph"].append(timed(run_graph, provider, batches))
            figures["provider"].append(timed(run_provider, provider, sentences, bs))
            if quantized is not None:
                figures["int8 graph"].append(timed(run_graph, quantized, batches))
        best = {c: max(v) for c, v in figures.items()}
        cells = " ".join(
            f"{best[c]:>7.1f} ({statistics.median(figures[c]):>6.1f})" for c in columns
        )
        print(f"{bs:>5} {cells} {best['ort graph'] / best['torch']:>11.2f}x")


if __name__ == "__main__":
    main()
