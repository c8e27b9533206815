"""Loading, sampling, and a continuous-batching engine around the Llama model.

One worker thread owns the model and runs the scheduling loop::

    loop:  admit waiting requests into free KV-cache slots
           prefill one chunk of each new prompt           (one forward per prompt)
           decode one token for every running sequence    (ONE forward for all)
           sample per sequence, hand deltas to the asyncio consumers

Callers stay on their event loop: ``Engine.generate()`` returns an async iterator
fed through ``loop.call_soon_threadsafe``. Keeping torch on a thread (instead of one
``asyncio.to_thread`` per step) keeps the event loop free, costs no per-step task
overhead, and lets callers on any event loop share the engine. A consumer that stops
iterating (or whose task is cancelled) flags its sequence; the worker drops it and
frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .args import ModelArgs
from .chat_format import ChatFormat
from .constrained import Grammars, TokenMasker
from .gguf_loader import LoadStats, cache_path_for, load_gguf, read_cache, write_cache
from .model import Transformer
from .tokenizer import IncrementalDecoder, token_bytes, tokenizer_from_gguf

logger = logging.getLogger(__name__)

# Tokens that end an assistant turn in the common chat formats, besides the GGUF's eos.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<|eom_id|>")


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context window (map to HTTP 400)."""


class EngineClosedError(RuntimeError):
    """The engine was closed while a request was waiting or running."""


@dataclass
class SamplingParams:
    """Per-request decoding settings (OpenAI names)."""

    max_tokens: int | None = None  # None: until the context window is full
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None  # same seed + same prompt -> same text
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, 0..20
    ignore_eos: bool = False
    # An llguidance grammar (``LLMatcher.grammar_from_json_schema`` / ``_lark`` / ...):
    # every token is sampled from those the grammar allows, and the sequence ends
    # ("stop") as soon as the grammar is complete and allows nothing more.
    grammar: str | None = None

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError("top_logprobs must be between 0 and 20")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")


@dataclass
class TokenLogprob:
    """One generated token's log-probability, with the most likely alternatives."""

    token: str
    token_id: int
    bytes: list[int]
    logprob: float
    top_logprobs: list[tuple[str, float]]


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationDelta:
    """A piece of one request's output. The last one has ``finish_reason`` and ``usage``.

    ``text`` may be empty while a multi-byte character or a possible stop sequence is
    held back; ``token_ids``/``logprobs`` are per generated token as they come.
    """

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length"
    usage: Usage | None = None


class _StopMatcher:
    """Holds back text that could be the start of a stop sequence.

    A stop string may arrive split over several tokens ("<|" then "end|>"), so text
    that ends with a prefix of some stop string is not released until the next token
    decides. Released text therefore never contains (part of) a stop string.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop sequence matched)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:k]):
                    keep = k
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[GenerationDelta | BaseException], None]
    decoder: IncrementalDecoder
    stop: _StopMatcher
    stop_ids: frozenset[int]
    max_new: int
    generator: torch.Generator | None
    matcher: Any = None  # llguidance.LLMatcher of params.grammar, fed every token
    slot: int = -1
    pos: int = 0  # tokens already in this slot's KV cache
    next_token: int = -1  # sampled, not yet fed through the model
    n_generated: int = 0
    cancelled: bool = False  # set from the consumer's thread; a bool store is atomic
    finished: bool = False

    @property
    def greedy(self) -> bool:
        return self.params.temperature < 1e-5


class Engine:
    """A loaded model plus the continuous-batching scheduler that serves it."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        chat_format: ChatFormat,
        *,
        eos_ids: frozenset[int],
        max_batch_size: int,
        prefill_chunk: int,
        load_stats: LoadStats,
    ) -> None:
        self.model = model
        self.args: ModelArgs = model.args
        self.tokenizer = tokenizer
        self.chat_format = chat_format
        self.eos_ids = eos_ids
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.load_stats = load_stats
        self.device = model.tok_embeddings.weight.device
        self._vocab = [tokenizer.id_to_token(i) or "" for i in range(tokenizer.get_vocab_size())]
        self.grammars = Grammars(tokenizer, tokenizer.get_vocab_size(), eos_ids)
        self._masker = TokenMasker(tokenizer.get_vocab_size(), max_batch_size)
        self._inbox: queue.SimpleQueue[_Sequence | None] = queue.SimpleQueue()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._free_slots = list(range(max_batch_size))
        self._closed = False
        self.decode_steps = 0  # forward passes that decoded >= 1 sequence
        self.max_batch_seen = 0  # largest number of sequences decoded in one forward
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()

    # -- loading -----------------------------------------------------------------

    @classmethod
    def load(
        cls,
        gguf_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        dtype: torch.dtype | None = None,
        quantize: bool | None = None,
        max_batch_size: int = 8,
        max_seq_len: int | None = 2048,
        prefill_chunk: int = 512,
        num_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
    ) -> Engine:
        """Load a GGUF model. Blocking (seconds); from async code use ``asyncio.to_thread``.

        CUDA in bfloat16 when available, else CPU in float32. On CPU, ``quantize``
        (default on) keeps 4-bit GGUF weights 4-bit for torch's int4 kernel: decode is
        memory-bound and reads 8x fewer weight bytes than float32. With
        ``quantize=False`` the CPU runs plain float32 matmuls, the exact reference math.
        ``max_seq_len`` caps the GGUF's context length: the KV cache is preallocated
        for ``max_batch_size`` sequences of that length.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if quantize is None:
            quantize = device.type == "cpu" and dtype == torch.float32
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        cache = Path(cache_dir) if cache_dir else None
        start = time.perf_counter()
        # On CPU the finished int4 layout is cached too: repacking takes seconds.
        packed_file = None
        if quantize and use_cache:
            packed_file = cache_path_for(Path(gguf_path).expanduser().resolve(), cache, "int4")
        cached = read_cache(packed_file) if packed_file else None
        if cached is not None:
            meta, weights = cached
            stats = LoadStats(time.perf_counter() - start, True, packed_file)
        else:
            gguf = load_gguf(gguf_path, cache, use_cache)
            meta, weights, stats = gguf.metadata, gguf.weights, gguf.stats
        tokenizer = tokenizer_from_gguf(meta)
        args = ModelArgs.from_gguf_metadata(
            meta,
            tie_embeddings="output.weight" not in weights,
            vocab_size=tokenizer.get_vocab_size(),
            max_seq_len=max_seq_len,
        )
        model = Transformer.from_weights(args, weights, dtype, device, quantize=quantize)
        del weights
        if packed_file is not None and cached is None:
            write_cache(packed_file, model.cacheable_state(), meta)
        model.setup_cache(max_batch_size)
        eos: set[int] = set()
        if (eos_id := meta.get("tokenizer.ggml.eos_token_id")) is not None:
            eos.add(int(eos_id))
        for name in _END_OF_TURN:
            tid = tokenizer.token_to_id(name)
            if tid is not None:
                eos.add(tid)
        logger.info(
            "loaded %s in %.2fs (weights %.2fs from a %s cache) on %s/%s%s",
            Path(gguf_path).name,
            time.perf_counter() - start,
            stats.seconds,
            "warm" if stats.from_cache else "cold",
            device,
            dtype,
            " with int4 weights" if quantize else "",
        )
        return cls(
            model,
            tokenizer,
            ChatFormat.from_gguf(meta),
            eos_ids=frozenset(eos),
            max_batch_size=max_batch_size,
            prefill_chunk=prefill_chunk,
            load_stats=stats,
        )

    # -- public API ----------------------------------------------------------------

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return self.chat_format.render(messages, tools=tools, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        # Prompts are rendered chat templates: special tokens in them are meant.
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    @property
    def num_active(self) -> int:
        """Sequences holding a KV-cache slot or waiting for one."""
        return len(self._running) + len(self._waiting) + self._inbox.qsize()

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None
    ) -> AsyncIterator[GenerationDelta]:
        """Start generating; iterate the result for deltas.

        Raises at once (not on first iteration) ``ContextLengthError`` when the prompt
        leaves no room to generate, ``ValueError`` on bad parameters (``GrammarError``
        for a grammar that does not compile). A new grammar compiles here, blocking:
        async callers ``await asyncio.to_thread(engine.grammars.prepare, grammar)`` first.
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        params = params or SamplingParams()
        params.validate()
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        limit = self.args.max_seq_len
        if len(ids) >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{len(ids)} tokens. Shorten the messages or the prompt."
            )
        if (bad := max(ids)) >= self.args.vocab_size or min(ids) < 0:
            raise ValueError(f"token id {bad} is outside the vocabulary")
        matcher = self.grammars.matcher(params.grammar) if params.grammar else None
        return self._stream(ids, params, matcher)

    async def _stream(
        self, ids: list[int], params: SamplingParams, matcher: Any = None
    ) -> AsyncIterator[GenerationDelta]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()

        def emit(item: GenerationDelta | BaseException) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        seq = self._new_sequence(ids, params, emit)
        seq.matcher = matcher
        self._inbox.put(seq)
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Consumer gone (break, aclose, task cancelled, error): free the slot.
            seq.cancelled = True

    async def close(self) -> None:
        """Stop the worker; requests still running end with ``EngineClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    # -- worker thread -------------------------------------------------------------

    def _new_sequence(
        self, ids: list[int], params: SamplingParams, emit: Callable[[Any], None]
    ) -> _Sequence:
        room = self.args.max_seq_len - len(ids)
        max_new = min(params.max_tokens or room, room)
        generator = None
        if params.temperature >= 1e-5:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else self.eos_ids
        )
        return _Sequence(
            prompt_ids=ids,
            params=params,
            emit=emit,
            decoder=IncrementalDecoder(self.tokenizer),
            stop=_StopMatcher(list(params.stop)),
            stop_ids=stop_ids,
            max_new=max_new,
            generator=generator,
        )

    def _run(self) -> None:
        if self.device.type == "cpu":
            # Activations underflow into subnormal floats deep in the network, and x86
            # handles those in microcode: 3-10x slower matmuls. Flush them to zero (a
            # per-thread CPU flag, hence set here, on the thread that runs the model).
            torch.set_flush_denormal(True)
        with torch.inference_mode():
            while True:
                if not self._admit():
                    break
                try:
                    self._step()
                except Exception as exc:  # fail the running requests, keep serving
                    logger.exception("engine step failed")
                    for seq in self._running:
                        self._finish(seq, exc)
                    self._running = []
        error = EngineClosedError("the engine was closed")
        for seq in [*self._running, *self._waiting]:
            self._finish(seq, error)
        self._running, self._waiting = [], collections.deque()

    def _admit(self) -> bool:
        """Move new requests into free slots. Blocks while idle. False: shutting down."""
        block = not self._running and not self._waiting
        while True:
            try:
                item = self._inbox.get(block=block, timeout=None)
            except queue.Empty:
                break
            if item is None:
                return False
            self._waiting.append(item)
            block = False
        while self._waiting and self._free_slots:
            seq = self._waiting.popleft()
            if seq.cancelled:
                continue
            self._free_slots.sort()  # lowest slots first: running slots stay consecutive
            seq.slot = self._free_slots.pop(0)
            self._running.append(seq)
        self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)
        return True

    def _step(self) -> None:
        self._running = [s for s in self._running if not self._drop_if_cancelled(s)]
        # Prefill: one chunk per new prompt per step, so a long prompt does not stall
        # the sequences already decoding for its whole length.
        decoding: list[_Sequence] = []
        for seq in self._running:
            if seq.pos < len(seq.prompt_ids):
                chunk = seq.prompt_ids[seq.pos : seq.pos + self.prefill_chunk]
                tokens = torch.tensor([chunk], device=self.device)
                logits = self.model(tokens, [seq.slot], [seq.pos])
                seq.pos += len(chunk)
                if seq.pos == len(seq.prompt_ids):
                    self._accept([seq], logits)
            else:
                decoding.append(seq)
        if decoding:
            decoding.sort(key=lambda s: s.slot)
            tokens = torch.tensor([[s.next_token] for s in decoding], device=self.device)
            logits = self.model(tokens, [s.slot for s in decoding], [s.pos for s in decoding])
            for s in decoding:
                s.pos += 1
            self.decode_steps += 1
            self.max_batch_seen = max(self.max_batch_seen, len(decoding))
            self._accept(decoding, logits)
        self._running = [s for s in self._running if not s.finished]

    def _drop_if_cancelled(self, seq: _Sequence) -> bool:
        if seq.cancelled and not seq.finished:
            seq.finished = True
            self._free_slots.append(seq.slot)
        return seq.cancelled

    def _accept(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample one token per row of logits [B, V] and advance each sequence."""
        constrained = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            # Logprobs below come from the masked logits: the distribution sampled from.
            self._masker.apply(logits, constrained, [seqs[i].matcher for i in constrained])
        tokens = self._sample(seqs, logits)
        want_lp = [i for i, s in enumerate(seqs) if s.params.logprobs]
        lp_rows: dict[int, TokenLogprob] = {}
        if want_lp:
            logprobs = torch.log_softmax(logits[want_lp].float(), dim=-1)
            for row, i in enumerate(want_lp):
                lp_rows[i] = self._token_logprob(
                    tokens[i], logprobs[row], seqs[i].params.top_logprobs
                )
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            self._advance(seq, token, lp_rows.get(i))

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[int]:
        if all(s.greedy for s in seqs):
            return [int(t) for t in logits.argmax(dim=-1).tolist()]
        out: list[int] = []
        for seq, row in zip(seqs, logits, strict=True):
            if seq.greedy:
                out.append(int(row.argmax()))
                continue
            p = seq.params
            probs = torch.softmax(row.float() / p.temperature, dim=-1)
            if p.top_k > 0:
                kth = torch.topk(probs, min(p.top_k, probs.numel())).values[-1]
                probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
            if p.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                # Keep the smallest prefix whose mass reaches top_p (always >= 1 token).
                drop = (torch.cumsum(sorted_p, 0) - sorted_p) > p.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            out.append(int(torch.multinomial(probs, 1, generator=seq.generator)))
        return out

    def _token_logprob(self, token: int, logprobs: torch.Tensor, top_n: int) -> TokenLogprob:
        top: list[tuple[str, float]] = []
        if top_n:
            values, ids = torch.topk(logprobs, top_n)
            top = [
                (self._token_text(int(t)), float(v))
                for v, t in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        raw = token_bytes(self._vocab[token])
        return TokenLogprob(
            token=self._token_text(token),
            token_id=token,
            bytes=list(raw),
            logprob=float(logprobs[token]),
            top_logprobs=top,
        )

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False) or ""

    def _advance(self, seq: _Sequence, token: int, lp: TokenLogprob | None) -> None:
        seq.n_generated += 1
        seq.next_token = token
        if token in seq.stop_ids:
            text, _ = seq.stop.feed(seq.decoder.flush())
            self._finish(seq, GenerationDelta(text + seq.stop.pending, [], None, "stop"))
            return
        complete = False
        if seq.matcher is not None:
            if not seq.matcher.consume_token(token):
                # Cannot happen with the mask applied; a bug, not the caller's fault.
                logger.error("grammar rejected a sampled token: %s", seq.matcher.get_error())
            # Nothing but the end may follow: stop now instead of spending a forward
            # pass on the end-of-turn token.
            complete = seq.matcher.is_stopped()
        text, stopped = seq.stop.feed(seq.decoder.push(token))
        delta = GenerationDelta(text, [token], [lp] if lp else None)
        if stopped:
            delta.finish_reason = "stop"
        elif (
            complete
            or seq.n_generated >= seq.max_new
            or seq.pos + 1 > self.args.max_seq_len
        ):
            rest, stopped = seq.stop.feed(seq.decoder.flush())
            delta.text += rest + ("" if stopped else seq.stop.pending)
            delta.finish_reason = "stop" if stopped or complete else "length"
        if delta.finish_reason:
            self._finish(seq, delta)
        else:
            self._send(seq, delta)

    def _finish(self, seq: _Sequence, final: GenerationDelta | BaseException) -> None:
        if isinstance(final, GenerationDelta):
            final.usage = Usage(len(seq.prompt_ids), seq.n_generated)
        if not seq.finished:
            seq.finished = True
            if seq.slot >= 0:
                self._free_slots.append(seq.slot)
        self._send(seq, final)

    def _send(self, seq: _Sequence, item: GenerationDelta | BaseException) -> None:
        try:
            seq.emit(item)
        except RuntimeError:  # the consumer's event loop is closed: nobody listens
            if not seq.finished:
                seq.finished = True
                self._free_slots.append(seq.slot)
            seq.cancelled = True
