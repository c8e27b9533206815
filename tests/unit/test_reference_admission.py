"""Admission, fairness, cancellation and per-request limits of ``inline::reference``.

On the real SmolLM2-135M-Instruct GGUF with one engine for the module (4 KV-cache
slots, so that a handful of long streams fill it); the provider under test is given
that engine rather than loading its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fnstack.api.inference import ChatCompletionRequest, CompletionRequest
from fnstack.errors import InvalidRequestError, RateLimitError
from fnstack.spec import ProviderContext
from providers.inference.llama import Engine, EngineBusyError, GenerationDelta, SamplingParams
from providers.inference.reference import ReferenceConfig, ReferenceProvider
from tests.unit.test_llama_engine import _gguf_path

SLOTS = 4
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    # Float32 matmuls (not the int4 kernel, which rounds through bfloat16): a resumed
    # sequence's recomputed cache then matches the one it lost closely enough for greedy
    # text to be identical, which is what the resume test checks.
    eng = Engine.load(_gguf_path(), max_seq_len=512, max_batch_size=SLOTS, quantize=False,
                      cache_dir=tmp_path_factory.mktemp("weights"),
                      preempt_after=4)  # small: the tests stay short on a busy CPU
    yield eng
    await eng.close()


def provider_for(engine: Engine, tmp_path: Path, **config: object) -> ReferenceProvider:
    provider = ReferenceProvider(ReferenceConfig(**config),  # type: ignore[arg-type]
                                 ProviderContext(provider_id="reference", cache_dir=tmp_path))
    provider._engine = engine  # share the module's engine: no second load
    return provider


async def poll(condition: Callable[[], bool], seconds: float = 60.0) -> float:
    """Wait until condition() holds; return how long it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def drain(stream: AsyncIterator[GenerationDelta], done: list[float]) -> str:
    text = "".join([d.text async for d in stream])
    done.append(time.monotonic())
    return text


@pytest.fixture(autouse=True)
async def idle_after(engine: Engine) -> AsyncIterator[None]:
    yield
    # Every test leaves the engine idle: nothing pending, no load left behind.
    await poll(lambda: engine.num_active == 0, 10.0)
    assert engine.pending_tokens == 0


async def test_a_short_request_is_not_starved_by_long_ones(engine: Engine) -> None:
    story = engine.apply_chat_template(STORY)
    long_params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    long_done: list[float] = []
    # Three times the slots: before, the short request queued behind all of them.
    longs = [asyncio.create_task(drain(engine.generate(story, long_params), long_done))
             for _ in range(3 * SLOTS)]
    steps = engine.decode_steps
    await poll(lambda: engine.decode_steps > steps + 6)  # the slots are decoding
    preemptions = engine.preemptions
    start = time.monotonic()
    short = [d async for d in engine.generate(engine.apply_chat_template(QUESTION),
                                              SamplingParams(temperature=0, max_tokens=4))]
    latency = time.monotonic() - start
    print(f"\n4-token request behind {3 * SLOTS} long streams: {latency:.2f}s")
    assert short[-1].finish_reason == "length" and short[-1].usage is not None
    assert short[-1].usage.completion_tokens == 4
    assert not long_done, "a long stream finished first: the short one waited for it"
    assert engine.preemptions > preemptions
    assert latency < 10
    for t in longs:
        t.cancel()
    await asyncio.gather(*longs, return_exceptions=True)


async def test_a_preempted_sequence_resumes_where_it_was(engine: Engine) -> None:
    story = engine.apply_chat_template(STORY)
    params = SamplingParams(temperature=0, max_tokens=40)
    alone = "".join([d.text async for d in engine.generate(story, params)])
    done: list[float] = []
    # Four greedy copies fill the slots; a short request then takes one slot from them.
    longs = [asyncio.create_task(drain(engine.generate(story, params), done))
             for _ in range(SLOTS)]
    steps = engine.decode_steps
    await poll(lambda: engine.decode_steps > steps + 6)
    preemptions = engine.preemptions
    short = "".join([d.text async for d in engine.generate(
        engine.apply_chat_template(QUESTION), SamplingParams(temperature=0, max_tokens=4))])
    assert short
    assert engine.preemptions == preemptions + 1
    # The preempted one recomputed its cache and went on: the same greedy text as alone.
    assert await asyncio.gather(*longs) == [alone] * SLOTS


async def test_a_long_request_waiting_past_aging_s_gets_a_slot(engine: Engine) -> None:
    story = engine.apply_chat_template(STORY)
    params = SamplingParams(temperature=0, max_tokens=300, ignore_eos=True)
    done: list[float] = []
    saved = engine.aging_s
    engine.aging_s = 0.5
    try:
        running = [asyncio.create_task(drain(engine.generate(story, params), done))
                   for _ in range(SLOTS)]
        steps = engine.decode_steps
        await poll(lambda: engine.decode_steps > steps + 6)
        # As long as those: no slot by length, but after aging_s it takes one anyway.
        late = engine.generate(story, params)
        first = await late.__anext__()
        assert first.token_ids
        assert not done, "it waited for a running stream to finish"
        late.cancel()
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    finally:
        engine.aging_s = saved


async def test_past_the_pending_bound_a_request_is_refused_with_retry_after(
    engine: Engine,
) -> None:
    story = engine.apply_chat_template(STORY)
    saved = engine.max_pending_tokens, engine.max_pending_sequences
    engine.max_pending_tokens, engine.max_pending_sequences = 300, 3
    try:
        # Alone, a request past the bound is taken (nothing else to wait for).
        big = engine.generate(story, SamplingParams(max_tokens=400, ignore_eos=True))
        assert engine.num_active == 1
        first = await big.__anext__()
        assert first.token_ids
        with pytest.raises(EngineBusyError) as busy:
            engine.generate("Hi", SamplingParams(max_tokens=4))
        assert busy.value.retry_after >= 1
        assert "max_pending_tokens=300" in str(busy.value)
        assert engine.num_active == 1  # the refused request left nothing behind
        await big.aclose()
        await poll(lambda: engine.num_active == 0)
        # Sequences count too: three are taken, a fourth request is refused.
        engine.max_pending_tokens = 10_000
        streams = engine.generate_many([(story, SamplingParams(max_tokens=300))] * 3)
        with pytest.raises(EngineBusyError, match="max_pending_sequences=3"):
            engine.generate("Hi", SamplingParams(max_tokens=4))
        for s in streams:
            s.cancel()
    finally:
        engine.max_pending_tokens, engine.max_pending_sequences = saved


async def test_a_dropped_stream_stops_its_sequence(engine: Engine) -> None:
    stream = engine.generate(engine.apply_chat_template(STORY), SamplingParams(max_tokens=400))
    assert engine.num_active == 1
    del stream  # never iterated, e.g. its request task was cancelled first
    await poll(lambda: engine.num_active == 0, 3.0)


async def test_an_abandoned_buffered_request_frees_every_sequence(
    engine: Engine, tmp_path: Path
) -> None:
    provider = provider_for(engine, tmp_path)
    prompts = [f"Story number {i}: once upon a time" for i in range(12)]
    request = CompletionRequest(model="m", prompt=prompts, n=4, max_tokens=200,
                                temperature=1.0)
    task = asyncio.create_task(provider.completion(request))
    await poll(lambda: engine.num_active == 48)  # 12 prompts x n=4, all submitted
    steps = engine.decode_steps
    await poll(lambda: engine.decode_steps > steps + 5)
    task.cancel()  # what fnstack.server.RequestGuard does when the client hangs up
    with pytest.raises(asyncio.CancelledError):
        await task
    took = await poll(lambda: engine.num_active == 0, 2.0)
    print(f"\n48 sequences freed {took:.2f}s after the cancel")
    steps = engine.decode_steps
    await asyncio.sleep(0.5)
    assert engine.decode_steps == steps  # idle: nothing decodes for nobody


async def test_an_abandoned_chat_stream_frees_all_its_choices(
    engine: Engine, tmp_path: Path
) -> None:
    provider = provider_for(engine, tmp_path)
    request = ChatCompletionRequest(model="m", messages=STORY, n=3, max_tokens=300,  # type: ignore[arg-type]
                                    stream=True)
    stream = await provider.chat_completion(request)
    assert not isinstance(stream, type(None))
    chunks = aiter(stream)  # type: ignore[call-overload]
    for _ in range(8):
        await anext(chunks)
    assert engine.num_active == 3
    await chunks.aclose()
    await poll(lambda: engine.num_active == 0, 2.0)


async def test_a_busy_engine_is_a_429_server_busy(engine: Engine, tmp_path: Path) -> None:
    provider = provider_for(engine, tmp_path)
    saved = engine.max_pending_sequences
    engine.max_pending_sequences = 2
    try:
        held = engine.generate_many([("Hi", SamplingParams(max_tokens=300))] * 2)
        with pytest.raises(RateLimitError) as exc:
            await provider.chat_completion(
                ChatCompletionRequest(model="m", messages=QUESTION, max_tokens=4))  # type: ignore[arg-type]
        err = exc.value
        assert err.status == 429 and err.code == "server_busy"
        assert int(err.headers["retry-after"]) >= 1
        for s in held:
            s.cancel()
    finally:
        engine.max_pending_sequences = saved


@pytest.mark.parametrize(
    ("config", "request_", "param", "key"),
    [
        ({"max_sequences_per_request": 8},
         CompletionRequest(model="m", prompt=["a", "b", "c"], n=3), "n",
         "max_sequences_per_request"),
        ({"max_sequences_per_request": 2},
         CompletionRequest(model="m", prompt=["a", "b", "c"]), "prompt",
         "max_sequences_per_request"),
        ({"max_prompt_tokens_per_request": 50},
         CompletionRequest(model="m", prompt="word " * 30, n=2), "prompt",
         "max_prompt_tokens_per_request"),
        ({"max_prompt_tokens_per_request": 20},
         ChatCompletionRequest(model="m", messages=QUESTION), "messages",  # type: ignore[arg-type]
         "max_prompt_tokens_per_request"),
        ({"max_tokens_cap": 100},
         CompletionRequest(model="m", prompt="a", max_tokens=101), "max_tokens",
         "max_tokens_cap"),
        ({"max_tokens_cap": 100},
         ChatCompletionRequest(model="m", messages=QUESTION, max_completion_tokens=500),  # type: ignore[arg-type]
         "max_completion_tokens", "max_tokens_cap"),
    ],
)
async def test_per_request_limits_are_400s_naming_the_key(
    engine: Engine, tmp_path: Path, config: dict[str, int],
    request_: CompletionRequest | ChatCompletionRequest, param: str, key: str,
) -> None:
    provider = provider_for(engine, tmp_path, **config)
    steps = engine.decode_steps
    with pytest.raises(InvalidRequestError) as exc:
        if isinstance(request_, CompletionRequest):
            await provider.completion(request_)
        else:
            await provider.chat_completion(request_)
    assert exc.value.status == 400 and exc.value.param == param
    assert key in exc.value.message and str(config[key]) in exc.value.message
    assert engine.num_active == 0 and engine.decode_steps == steps  # refused before work


async def test_within_the_limits_a_request_is_served(engine: Engine, tmp_path: Path) -> None:
    provider = provider_for(engine, tmp_path, max_sequences_per_request=6, max_tokens_cap=4)
    out = await provider.completion(CompletionRequest(model="m", prompt=["a", "b", "c"], n=2,
                                                      max_tokens=4, temperature=0))
    assert len(out.choices) == 6  # type: ignore[union-attr]
    # With no max_tokens, chat gets default_max_tokens bounded by the cap.
    chat = await provider.chat_completion(ChatCompletionRequest(model="m", messages=QUESTION))  # type: ignore[arg-type]
    assert chat.usage is not None and chat.usage.completion_tokens <= 4  # type: ignore[union-attr]


def test_limits_are_documented_config_fields() -> None:
    doc = ReferenceConfig.__doc__ or ""
    defaults = ReferenceConfig()
    for key in ("max_sequences_per_request", "max_prompt_tokens_per_request", "max_tokens_cap",
                "max_pending_sequences", "max_pending_tokens", "preempt_after_tokens",
                "aging_s"):
        assert key in doc, key
        value = getattr(defaults, key)
        assert f"``{key}`` ({value:g}" in doc, key
