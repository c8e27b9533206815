"""inline::onnx-embeddings: per-request limits (400), bounded admission (429), stopping
the work of a request whose task is cancelled, and small requests not starved.

Real model and graph (exported once into the default cache, as `fnstack run` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fnstack.api.inference import EmbeddingRequest
from fnstack.errors import InvalidRequestError, RateLimitError
from fnstack.spec import ProviderContext
from providers.inference.onnx_embeddings import (
    OnnxEmbeddingsConfig,
    OnnxEmbeddingsProvider,
    bundled_model_dir,
    create,
    default_graph_path,
    ensure_graph,
)

pytestmark = pytest.mark.slow

MODEL = "all-MiniLM-L6-v2"
SENTENCE = "serverless functions scale to zero and start cold"  # 10 tokens with specials


@pytest.fixture(scope="module")
def cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's own cache (.pytest_cache), so the graph is exported once, not per run;
    never the user's ~/.cache."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("fnstack-onnx") if cache is not None else tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def graph(cache_dir: Path) -> Path:
    return ensure_graph(default_graph_path(bundled_model_dir(), cache_dir, MODEL),
                        bundled_model_dir())


@pytest.fixture
def make(graph: Path) -> Callable[..., Any]:
    async def build(**config: Any) -> OnnxEmbeddingsProvider:
        ctx = ProviderContext(provider_id="minilm", cache_dir=graph.parent.parent)
        provider = await create(
            OnnxEmbeddingsConfig(onnx_path=graph, intra_op_threads=1, **config), ctx
        )
        await provider.warmup()
        return provider

    return build


def request(inputs: Any) -> EmbeddingRequest:
    return EmbeddingRequest(model=MODEL, input=inputs)


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def count_batches(provider: OnnxEmbeddingsProvider) -> list[int]:
    """Instrument the real runtime: record each batch as it starts."""
    rt = provider._runtime
    assert rt is not None
    seen: list[int] = []
    real = rt.run_batch

    def run_batch(seqs: list[list[int]], chunk: list[int]) -> Any:
        seen.append(len(chunk))
        return real(seqs, chunk)

    rt.run_batch = run_batch  # type: ignore[method-assign]
    return seen


def test_documented_defaults() -> None:
    cfg = OnnxEmbeddingsConfig()
    assert (cfg.max_inputs, cfg.max_input_tokens, cfg.max_request_tokens) == (2048, 8192, 300_000)
    assert (cfg.max_pending_requests, cfg.max_pending_tokens) == (16, 131_072)


async def test_inputs_per_request(make: Callable[..., Any]) -> None:
    provider = await make(max_inputs=3)
    assert len((await provider.embeddings(request([SENTENCE] * 3))).data) == 3
    with pytest.raises(InvalidRequestError) as info:
        await provider.embeddings(request([SENTENCE] * 4))
    assert info.value.code == "too_many_inputs" and "max_inputs" in info.value.message


async def test_tokens_per_input_counted_before_truncation(make: Callable[..., Any]) -> None:
    provider = await make(max_input_tokens=300)
    # 9 tokens per repetition: 60 of them are far past 300 (and the model's 256).
    with pytest.raises(InvalidRequestError) as info:
        await provider.embeddings(request(["fine", " ".join([SENTENCE] * 60)]))
    assert info.value.code == "input_too_long" and "input[1]" in info.value.message
    with pytest.raises(InvalidRequestError):
        await provider.embeddings(request([[2000] * 400]))
    # Between the model's context and the limit: truncated and embedded, as before.
    out = await provider.embeddings(request(" ".join([SENTENCE] * 30)))  # 272 tokens
    assert out.usage.prompt_tokens == 256


async def test_tokens_per_request(make: Callable[..., Any]) -> None:
    provider = await make(max_request_tokens=25)
    await provider.embeddings(request([SENTENCE, SENTENCE]))  # 2 x 10 tokens
    with pytest.raises(InvalidRequestError) as info:
        await provider.embeddings(request([SENTENCE] * 3))
    assert info.value.code == "request_too_large"


async def test_admission_answers_429_with_retry_after(make: Callable[..., Any]) -> None:
    provider = await make(max_pending_requests=1, max_batch_size=1)
    big = asyncio.create_task(provider.embeddings(request([SENTENCE] * 64)))
    await until(lambda: provider._admission.requests > 0)
    with pytest.raises(RateLimitError) as info:
        await provider.embeddings(request("hi"))
    assert info.value.status == 429
    assert int(info.value.headers["retry-after"]) >= 1
    await big
    assert provider._admission.requests == 0 and provider._admission.tokens == 0
    await provider.embeddings(request("hi"))  # admitted again once the queue is free


async def test_token_bound_admits_a_lone_large_request(make: Callable[..., Any]) -> None:
    provider = await make(max_pending_tokens=50, max_batch_size=8)
    assert len((await provider.embeddings(request([SENTENCE] * 20))).data) == 20  # 200 tokens
    big = asyncio.create_task(provider.embeddings(request([SENTENCE] * 20)))
    await until(lambda: provider._admission.requests > 0)
    with pytest.raises(RateLimitError):
        await provider.embeddings(request([SENTENCE] * 5))
    await big


async def test_cancelled_request_stops_between_batches(make: Callable[..., Any]) -> None:
    provider = await make(max_batch_size=1)
    batches = count_batches(provider)
    task = asyncio.create_task(provider.embeddings(request([SENTENCE] * 400)))
    await until(lambda: len(batches) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    at_cancel = len(batches)
    await asyncio.sleep(0.5)
    assert len(batches) <= at_cancel + 1, "batches went on after the request was cancelled"
    assert len(batches) < 50
    assert provider._admission.requests == 0 and provider._admission.tokens == 0


async def test_small_request_is_not_starved_by_a_big_one(make: Callable[..., Any]) -> None:
    provider = await make(max_batch_size=1)
    batches = count_batches(provider)
    big = asyncio.create_task(provider.embeddings(request([SENTENCE] * 300)))
    await until(lambda: len(batches) >= 2)
    await provider.embeddings(request("hello"))
    assert not big.done()
    assert len(batches) < 60  # it ran after a few of the big one's batches, not all 300
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
