"""The engine of the ``inline::reference`` inference provider: a pure-torch Llama.

Shaped like Meta's llama-models: ``args.py`` (hyper-parameters), ``model.py`` (the
math), ``tokenizer.py``, ``chat_format.py``, ``generation.py`` (sampling and the
continuous-batching engine), plus ``gguf_loader.py`` (weights from a GGUF file),
``constrained.py`` (llguidance grammars masking the logits) and ``structured.py``
(JSON / tool-call grammars and the streaming tool-call parser).

Usage, from async code (the provider)::

    engine = await asyncio.to_thread(Engine.load, gguf_path)       # device=None: auto
    prompt = engine.apply_chat_template(messages, tools)           # -> str
    try:
        stream = engine.generate(prompt, SamplingParams(
            max_tokens=256, temperature=0.7, top_p=0.9, seed=42,
            stop=["\\n\\n"], logprobs=True, top_logprobs=2,
        ))
    except ContextLengthError as exc:   # a ValueError: map to HTTP 400
        ...
    async for delta in stream:          # GenerationDelta
        delta.text                      # new text ("" while held back)
        delta.token_ids, delta.logprobs # per generated token (TokenLogprob list or None)
        delta.finish_reason             # None, then "stop" | "length" on the last delta
        delta.usage                     # Usage(prompt_tokens, completion_tokens) on the last
    await engine.close()

* ``SamplingParams(grammar=...)`` (an llguidance grammar, e.g.
  ``structured.json_grammar(schema)``) constrains every sampled token; the sequence
  ends with "stop" as soon as the grammar is complete. Compile new grammars off the
  event loop first: ``await asyncio.to_thread(engine.grammars.prepare, grammar)``
  (``GrammarError``, a ValueError, when it does not compile; cached after).
* ``generate()`` validates eagerly: ``ContextLengthError`` when the prompt fills the
  context window (``engine.args.max_seq_len``), ``ValueError`` for bad parameters.
  Generation past the window is clamped (finish_reason ``"length"``).
* Streams from concurrent requests are decoded together in one batch (up to
  ``max_batch_size``; more wait for a slot, the fewest tokens left first, and a much
  shorter one may preempt a long one: see ``generation``). ``generate_many()`` submits a
  request's sequences all or none; past ``max_pending_sequences``/``max_pending_tokens``
  it raises ``EngineBusyError`` (``retry_after`` seconds; map to 429). Leaving the
  ``async for`` early (then ``aclose()``/``cancel()``, or dropping the iterator) or
  cancelling the consuming task stops that sequence and frees its slot;
  ``engine.num_active`` counts running + waiting sequences.
* A non-streaming call is ``"".join(d.text async for d in engine.generate(...))``.
* ``ChatTemplateError`` (a ValueError) when the model's template rejects the messages.
* ``Engine.load(path, device=None, *, dtype=None, quantize=None, max_batch_size=8,
  max_seq_len=2048, prefill_chunk=512, num_threads=None, cache_dir=None)``: CUDA in
  bfloat16 when available; on CPU float32 activations with the GGUF's 4-bit weights
  kept 4-bit (torch's int4 kernel; ``quantize=False`` for plain float32 matmuls).
  The KV cache is preallocated for ``max_batch_size`` x ``max_seq_len`` tokens.
* Dequantized weights (and the CPU int4 layout) are cached as safetensors under
  ``$FNSTACK_CACHE_DIR/weights`` (default ``~/.cache/fnstack``), keyed by the GGUF's
  path, size and mtime; ``engine.load_stats`` tells whether the cache was warm. An
  unwritable cache dir (Lambda) only logs a warning.
* ``engine.args`` (``ModelArgs``: ``max_seq_len``, ``vocab_size``...), ``engine.tokenizer``
  (a ``tokenizers.Tokenizer``), ``engine.encode()/decode()``, ``engine.eos_ids``.
"""

from __future__ import annotations

from .args import ModelArgs
from .chat_format import ChatTemplateError
from .constrained import GrammarError
from .generation import (
    ContextLengthError,
    Engine,
    EngineBusyError,
    EngineClosedError,
    GenerationDelta,
    GenerationStream,
    SamplingParams,
    TokenLogprob,
    Usage,
)

__all__ = [
    "ChatTemplateError",
    "ContextLengthError",
    "Engine",
    "EngineBusyError",
    "EngineClosedError",
    "GenerationDelta",
    "GenerationStream",
    "GrammarError",
    "ModelArgs",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]
