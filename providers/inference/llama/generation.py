"""Loading, sampling, and a continuous-batching engine around the Llama model.

One worker thread owns the model and runs the scheduling loop::

    loop:  admit waiting sequences into free KV-cache slots (shortest first; may preempt)
           prefill one chunk of each new prompt           (one forward per prompt)
           decode one token for every running sequence    (ONE forward for all)
           sample per sequence, hand deltas to the asyncio consumers

Callers stay on their event loop: ``Engine.generate()`` returns an async iterator
fed through ``loop.call_soon_threadsafe``. Keeping torch on a thread (instead of one
``asyncio.to_thread`` per step) keeps the event loop free, costs no per-step task
overhead, and lets callers on any event loop share the engine. A consumer that stops
iterating (or whose task is cancelled, or that drops the iterator) flags its sequence;
the worker drops it and frees its slot at the next step.

Admission and fairness. Work is bounded where it enters: ``generate_many()`` refuses
(``EngineBusyError``, with a retry-after) a request whose sequences or tokens would pass
``max_pending_sequences`` / ``max_pending_tokens`` while other work is pending; a request
alone is always taken. Inside the bound nobody starves behind long generations:

    waiting order:  sequences waiting >= aging_s first (oldest first), then the fewest
                    tokens left to generate first
    preemption:     with no free slot, the best waiting sequence takes the slot of the
                    running sequence with the most tokens left, if that one has run
                    >= preempt_after tokens since admission and has at least twice as
                    many tokens left (any amount more, for a sequence past aging_s)

A preempted sequence keeps its sampler, grammar and detokenizer state and loses only
its KV cache: when readmitted it prefills its prompt plus the tokens it generated (as
vLLM's recompute preemption), then continues where it was.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .args import ModelArgs
from .chat_format import ChatFormat
from .constrained import Grammars, TokenMasker
from .gguf_loader import LoadStats, cache_path_for, load_gguf, read_cache, write_cache
from .model import Transformer
from .stops import StopMatcher
from .tokenizer import IncrementalDecoder, token_bytes, tokenizer_from_gguf

logger = logging.getLogger(__name__)

# Tokens that end an assistant turn in the common chat formats, besides the GGUF's eos.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<|eom_id|>")


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context window (map to HTTP 400)."""


class EngineClosedError(RuntimeError):
    """The engine was closed while a request was waiting or running."""


class EngineBusyError(RuntimeError):
    """Taking the request would pass the bound on pending work (map to HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, estimated from the measured throughput


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


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[GenerationDelta | BaseException], None]
    decoder: IncrementalDecoder
    stop: StopMatcher
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
    # What the slot must hold before decoding: the prompt, or after a preemption the
    # prompt plus every generated token but the last (``next_token``, fed next).
    prefill_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    charged: int = 0  # tokens of work this sequence still counts in the engine's load
    queued_at: float = 0.0  # when it last joined the waiting list
    slice_start: int = 0  # n_generated when it last got a slot

    @property
    def remaining(self) -> int:
        return self.max_new - self.n_generated

    @property
    def greedy(self) -> bool:
        return self.params.temperature < 1e-5


class GenerationStream:
    """The deltas of one submitted sequence, as an async iterator.

    The sequence is queued as soon as it is submitted. ``aclose()``/``cancel()``, a
    cancelled consuming task, or dropping the object stops it: the worker frees its slot
    (or takes it off the waiting list) at its next step.
    """

    def __init__(self, seq: _Sequence, inbox: asyncio.Queue[GenerationDelta | BaseException]):
        self._seq = seq
        self._inbox = inbox
        self._done = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._inbox.get()
        except BaseException:  # the consuming task was cancelled: nobody will read on
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    def cancel(self) -> None:
        self._done = True
        self._seq.cancelled = True

    async def aclose(self) -> None:
        self.cancel()

    def __del__(self) -> None:
        # A stream dropped unread (a request task cancelled before it iterated) must
        # not keep generating for nobody.
        seq = getattr(self, "_seq", None)
        if seq is not None:
            seq.cancelled = True


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
        max_pending_sequences: int = 256,
        max_pending_tokens: int = 65536,
        preempt_after: int = 16,
        aging_s: float = 20.0,
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
        self.max_pending_sequences = max_pending_sequences
        self.max_pending_tokens = max_pending_tokens
        self.preempt_after = max(1, preempt_after)
        self.aging_s = aging_s
        self._inbox: queue.SimpleQueue[_Sequence | None] = queue.SimpleQueue()
        self._waiting: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._free_slots = list(range(max_batch_size))
        self._closed = False
        # The load: sequences submitted and not yet retired, and the tokens of work they
        # still hold (prompt + max_new at submission, less each token as it is done).
        # Written by the event loop (submit) and the worker (progress): under a lock.
        self._load_lock = threading.Lock()
        self._pending_sequences = 0
        self._pending_tokens = 0
        self._tokens_per_s: float | None = None  # decode throughput, for retry-after
        self.decode_steps = 0  # forward passes that decoded >= 1 sequence
        self.max_batch_seen = 0  # largest number of sequences decoded in one forward
        self.preemptions = 0  # running sequences sent back to wait for a shorter one
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
        max_pending_sequences: int = 256,
        max_pending_tokens: int = 65536,
        preempt_after: int = 16,
        aging_s: float = 20.0,
    ) -> Engine:
        """Load a GGUF model. Blocking (seconds); from async code use ``asyncio.to_thread``.

        CUDA in bfloat16 when available, else CPU in float32. On CPU, ``quantize``
        (default on) keeps 4-bit GGUF weights 4-bit for torch's int4 kernel: decode is
        memory-bound and reads 8x fewer weight bytes than float32. With
        ``quantize=False`` the CPU runs plain float32 matmuls, the exact reference math.
        ``max_seq_len`` caps the GGUF's context length: the KV cache is preallocated
        for ``max_batch_size`` sequences of that length. ``max_pending_*``,
        ``preempt_after`` and ``aging_s`` shape admission and fairness (module docstring).
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
            max_pending_sequences=max_pending_sequences,
            max_pending_tokens=max_pending_tokens,
            preempt_after=preempt_after,
            aging_s=aging_s,
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
        """Sequences submitted and not yet done: running, waiting, or just submitted."""
        return self._pending_sequences

    @property
    def pending_tokens(self) -> int:
        """Tokens of work the pending sequences still hold (prompt + tokens to generate)."""
        return self._pending_tokens

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None
    ) -> GenerationStream:
        """Start generating; iterate the result for deltas.

        Raises at once (not on first iteration) ``ContextLengthError`` when the prompt
        leaves no room to generate, ``ValueError`` on bad parameters (``GrammarError``
        for a grammar that does not compile), ``EngineBusyError`` past the bound on
        pending work. A new grammar compiles here, blocking: async callers
        ``await asyncio.to_thread(engine.grammars.prepare, grammar)`` first.
        Call from a running event loop (the deltas are delivered to it).
        """
        return self.generate_many([(prompt, params or SamplingParams())])[0]

    def generate_many(
        self, jobs: list[tuple[str | list[int], SamplingParams]]
    ) -> list[GenerationStream]:
        """Submit the sequences of one request together: all are taken, or none.

        Validates every job first (as ``generate``), then checks the whole request
        against ``max_pending_sequences``/``max_pending_tokens``: while other work is
        pending, a request that would pass either is refused with ``EngineBusyError``.
        A request alone is always taken (per-request limits are the caller's).
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        checked = []
        for prompt, params in jobs:
            params.validate()
            ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
            self._check_prompt(ids)
            matcher = self.grammars.matcher(params.grammar) if params.grammar else None
            checked.append((ids, params, matcher))
        loop = asyncio.get_running_loop()
        seqs = [self._new_sequence(ids, params, matcher) for ids, params, matcher in checked]
        cost = sum(seq.charged for seq in seqs)
        with self._load_lock:
            if self._pending_sequences and (
                self._pending_sequences + len(seqs) > self.max_pending_sequences
                or self._pending_tokens + cost > self.max_pending_tokens
            ):
                raise self._busy(len(seqs), cost)
            self._pending_sequences += len(seqs)
            self._pending_tokens += cost
        streams = []
        for seq in seqs:
            inbox: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()
            seq.emit = _emitter(loop, inbox)
            streams.append(GenerationStream(seq, inbox))
            self._inbox.put(seq)
        return streams

    def _check_prompt(self, ids: list[int]) -> None:
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

    def _busy(self, n: int, cost: int) -> EngineBusyError:
        # Past the bound by `excess` tokens: about that much work must be done first.
        excess = max(self._pending_tokens + cost - self.max_pending_tokens, cost)
        rate = self._tokens_per_s
        wait = 1 if not rate else min(60, max(1, math.ceil(excess / rate)))
        return EngineBusyError(
            f"the model is busy ({self._pending_sequences} sequences holding "
            f"{self._pending_tokens} tokens of work; this request adds {n} holding {cost}; "
            f"limits max_pending_sequences={self.max_pending_sequences}, "
            f"max_pending_tokens={self.max_pending_tokens}); retry in {wait} s",
            retry_after=wait,
        )

    async def close(self) -> None:
        """Stop the worker; requests still running end with ``EngineClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    # -- worker thread -------------------------------------------------------------

    def _new_sequence(self, ids: list[int], params: SamplingParams, matcher: Any) -> _Sequence:
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
            emit=_unbound,
            decoder=IncrementalDecoder(self.tokenizer),
            stop=StopMatcher(list(params.stop)),
            stop_ids=stop_ids,
            max_new=max_new,
            generator=generator,
            matcher=matcher,
            prefill_ids=ids,
            charged=len(ids) + max_new,
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
        while True:  # submitted after the last admission: nobody will run them
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._finish(item, error)
        self._running, self._waiting = [], []

    def _admit(self) -> bool:
        """Give slots to waiting sequences. Blocks while idle. False: shutting down."""
        block = not self._running and not self._waiting
        now = time.monotonic()
        while True:
            try:
                item = self._inbox.get(block=block, timeout=None)
            except queue.Empty:
                break
            if item is None:
                return False
            item.queued_at = now
            self._waiting.append(item)
            block = False
        self._waiting = [s for s in self._waiting if not self._drop_if_cancelled(s)]
        while self._waiting:
            seq = min(self._waiting, key=lambda s: self._priority(s, now))
            if not self._free_slots:
                victim = self._victim(seq, now)
                if victim is None:
                    break
                self._preempt(victim, now)
            self._waiting.remove(seq)
            self._free_slots.sort()  # lowest slots first: running slots stay consecutive
            seq.slot = self._free_slots.pop(0)
            seq.slice_start = seq.n_generated
            self._running.append(seq)
        return True

    def _priority(self, seq: _Sequence, now: float) -> tuple[int, float]:
        if now - seq.queued_at >= self.aging_s:
            return (0, seq.queued_at)  # waited long enough: oldest first
        return (1, seq.remaining)  # else the fewest tokens left first

    def _victim(self, seq: _Sequence, now: float) -> _Sequence | None:
        """The running sequence ``seq`` may take the slot of, if any."""
        eligible = [
            r for r in self._running
            if not r.finished and r.n_generated - r.slice_start >= self.preempt_after
        ]
        if not eligible:
            return None
        victim = max(eligible, key=lambda r: r.remaining)
        aged = now - seq.queued_at >= self.aging_s
        # Thrashing guard: only for a much shorter sequence (or one waiting too long),
        # and never for a victim about to finish anyway.
        if victim.remaining <= self.preempt_after:
            return None
        if aged or 2 * seq.remaining <= victim.remaining:
            return victim
        return None

    def _preempt(self, seq: _Sequence, now: float) -> None:
        self._running.remove(seq)
        self._free_slots.append(seq.slot)
        seq.slot = -1
        # n_generated >= preempt_after >= 1 here: next_token holds the last output token.
        seq.prefill_ids = seq.prompt_ids + seq.output_ids[:-1]
        seq.pos = 0
        seq.queued_at = now
        self._waiting.append(seq)
        self.preemptions += 1

    def _step(self) -> None:
        self._running = [s for s in self._running if not self._drop_if_cancelled(s)]
        # Prefill: one chunk per new prompt per step, so a long prompt does not stall
        # the sequences already decoding for its whole length.
        decoding: list[_Sequence] = []
        for seq in self._running:
            if seq.pos < len(seq.prefill_ids):
                chunk = seq.prefill_ids[seq.pos : seq.pos + self.prefill_chunk]
                tokens = torch.tensor([chunk], device=self.device)
                logits = self.model(tokens, [seq.slot], [seq.pos])
                seq.pos += len(chunk)
                if seq.pos == len(seq.prefill_ids) and seq.n_generated == 0:
                    self._charge(seq, len(seq.prompt_ids))
                    self._accept([seq], logits)
                # A resumed sequence already holds its next token: it decodes next step.
            else:
                decoding.append(seq)
        if decoding:
            start = time.perf_counter()
            decoding.sort(key=lambda s: s.slot)
            tokens = torch.tensor([[s.next_token] for s in decoding], device=self.device)
            logits = self.model(tokens, [s.slot for s in decoding], [s.pos for s in decoding])
            for s in decoding:
                s.pos += 1
            self.decode_steps += 1
            self.max_batch_seen = max(self.max_batch_seen, len(decoding))
            self._accept(decoding, logits)
            rate = len(decoding) / max(time.perf_counter() - start, 1e-6)
            prev = self._tokens_per_s
            self._tokens_per_s = rate if prev is None else 0.9 * prev + 0.1 * rate
        self._running = [s for s in self._running if not s.finished]

    def _drop_if_cancelled(self, seq: _Sequence) -> bool:
        if seq.cancelled:
            self._retire(seq)
        return seq.cancelled

    def _charge(self, seq: _Sequence, done: int) -> None:
        """``done`` tokens of the sequence's work are done: take them off the load."""
        done = min(done, seq.charged)
        seq.charged -= done
        with self._load_lock:
            self._pending_tokens -= done

    def _retire(self, seq: _Sequence) -> None:
        """The sequence leaves the engine: free its slot and its share of the load."""
        if seq.finished:
            return
        seq.finished = True
        if seq.slot >= 0:
            self._free_slots.append(seq.slot)
            seq.slot = -1
        with self._load_lock:
            self._pending_sequences -= 1
            self._pending_tokens -= seq.charged
        seq.charged = 0

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
        seq.output_ids.append(token)
        self._charge(seq, 1)
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
        self._retire(seq)
        self._send(seq, final)

    def _send(self, seq: _Sequence, item: GenerationDelta | BaseException) -> None:
        try:
            seq.emit(item)
        except RuntimeError:  # the consumer's event loop is closed: nobody listens
            seq.cancelled = True
            self._retire(seq)


def _emitter(
    loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[GenerationDelta | BaseException]
) -> Callable[[GenerationDelta | BaseException], None]:
    def emit(item: GenerationDelta | BaseException) -> None:
        loop.call_soon_threadsafe(inbox.put_nowait, item)

    return emit


def _unbound(item: GenerationDelta | BaseException) -> None:
    raise RuntimeError("sequence not bound to a consumer")
