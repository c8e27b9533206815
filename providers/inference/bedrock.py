"""``remote::bedrock``: Amazon Bedrock through the Converse and ConverseStream APIs.

OpenAI chat requests become Converse requests (system blocks, content blocks, toolUse /
toolResult, toolConfig, inferenceConfig) and the answers come back as OpenAI objects.
Embeddings go through InvokeModel with the Titan or Cohere body.

boto3 is synchronous: calls run in ``asyncio.to_thread``; a ConverseStream's
EventStream is read by a worker thread that hands each event to the event loop as it
arrives (`ThreadedEventStream`), so chunks are relayed without buffering the answer.
botocore errors become `fnstack.errors` at one boundary (`map_aws_errors`).

Example run config::

    providers:
      inference:
        - provider_id: bedrock
          provider_type: remote::bedrock
          config:
            region: us-east-1
            models:
              - {model_id: amazon.nova-lite-v1:0}
              - {model_id: amazon.titan-embed-text-v2:0, model_type: embedding,
                 metadata: {embedding_dimension: 1024}}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnstack.api.inference import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChoiceDelta,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeveloperMessage,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FinishReason,
    FunctionCall,
    NamedToolChoice,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    SystemMessage,
    ToolCall,
    ToolCallDelta,
    ToolCallDeltaFunction,
    Usage,
    UserMessage,
    message_text,
)
from fnstack.errors import (
    InvalidRequestError,
    UpstreamError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.inference._aws import (
    RelayedStream,
    ThreadedEventStream,
    aws_client_config,
    create_client,
    map_aws_errors,
)

__all__ = [
    "BedrockConfig",
    "BedrockProvider",
    "RelayedStream",
    "ThreadedEventStream",
    "aws_client_config",
    "map_aws_errors",
    "spec",
]

logger = logging.getLogger(__name__)


class BedrockModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str
    model_type: Literal["llm", "embedding"] = "llm"
    metadata: dict[str, Any] = {}


class Guardrail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identifier: str
    version: str = "DRAFT"
    trace: Literal["enabled", "disabled"] = "disabled"


_DEFAULT_MODELS = [
    BedrockModel(model_id="amazon.nova-micro-v1:0"),
    BedrockModel(model_id="amazon.nova-lite-v1:0"),
    BedrockModel(model_id="anthropic.claude-3-haiku-20240307-v1:0"),
    BedrockModel(model_id="meta.llama3-1-8b-instruct-v1:0"),
    BedrockModel(
        model_id="amazon.titan-embed-text-v2:0",
        model_type="embedding",
        metadata={"embedding_dimension": 1024},
    ),
    BedrockModel(
        model_id="cohere.embed-english-v3",
        model_type="embedding",
        metadata={"embedding_dimension": 1024},
    ),
]


class BedrockConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(default=None, description="AWS region; default: the SDK's")
    endpoint_url: str | None = Field(default=None, description="Another endpoint (tests, VPC)")
    models: list[BedrockModel] = Field(
        default_factory=lambda: list(_DEFAULT_MODELS),
        description="Bedrock model ids to report in /v1/models (model access must be granted)",
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0, description="Seconds; between events too")
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per call, the first included (botocore)"
    )
    max_connections: int = Field(default=50, ge=1)
    guardrail: Guardrail | None = None

    @field_validator("region", "endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        # ${env.X:=} substitutes to "": that means "not set", not an empty region.
        return value or None


_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                  "image/gif": "gif", "image/webp": "webp"}
_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}


def _image_block(url: str) -> dict[str, Any]:
    # Bedrock takes image bytes, never a URL it would fetch itself.
    header, sep, data = url.partition(",")
    if not url.startswith("data:") or not sep or not header.endswith(";base64"):
        raise InvalidRequestError(
            "Bedrock accepts images only inline, as data:image/...;base64,... URLs",
            param="messages.content.image_url",
        )
    mime = header[5:].split(";")[0].lower()
    fmt = _IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise InvalidRequestError(
            f"image type {mime!r} is not supported by Bedrock; use png, jpeg, gif or webp",
            param="messages.content.image_url",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(
            "an image data: URL is not valid base64", param="messages.content.image_url"
        ) from exc
    return {"image": {"format": fmt, "source": {"bytes": raw}}}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.type == "text":
            blocks.append({"text": part.text})
        else:
            blocks.append(_image_block(part.image_url.url))
    return blocks


def _tool_input(arguments: str) -> Any:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError as exc:
        raise InvalidRequestError(
            f"tool call arguments must be JSON, got {arguments[:80]!r}",
            param="messages.tool_calls.function.arguments",
        ) from exc
    # Bedrock wants a JSON object as toolUse.input.
    return value if isinstance(value, dict) else {"value": value}


def _messages(request: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages): roles alternate and consecutive turns are merged, as
    Converse requires (all tool results of one turn go in one user message)."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for m in request.messages:
        if isinstance(m, SystemMessage | DeveloperMessage):
            text = message_text(m.content)
            if text:
                system.append({"text": text})
        elif isinstance(m, UserMessage):
            add("user", _user_blocks(m.content))
        elif isinstance(m, AssistantMessage):
            text = message_text(m.content)
            blocks: list[dict[str, Any]] = [{"text": text}] if text else []
            for call in m.tool_calls or []:
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call.id,
                            "name": call.function.name,
                            "input": _tool_input(call.function.arguments),
                        }
                    }
                )
            add("assistant", blocks)
        else:  # tool
            result = {"toolUseId": m.tool_call_id, "content": [{"text": message_text(m.content)}]}
            add("user", [{"toolResult": result}])
    return system, messages


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])


def _tool_config(
    request: ChatCompletionRequest, messages: list[dict[str, Any]]
) -> dict[str, Any] | None:
    if not request.tools:
        return None
    choice = request.tool_choice
    # "none" means: offer no tools. But Converse insists on a toolConfig once the
    # history holds toolUse/toolResult blocks, so then the tools stay, unforced.
    if choice == "none" and not _has_tool_blocks(messages):
        return None
    tools = []
    for tool in request.tools:
        spec: dict[str, Any] = {
            "name": tool.function.name,
            "inputSchema": {
                "json": tool.function.parameters or {"type": "object", "properties": {}}
            },
        }
        if tool.function.description:
            spec["description"] = tool.function.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, NamedToolChoice):
        names = {t.function.name for t in request.tools}
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice",
            )
        config["toolChoice"] = {"tool": {"name": choice.function.name}}
    return config


def _format_instruction(request: ChatCompletionRequest) -> str | None:
    # Converse has no structured-output switch for every model: ask in words (best effort).
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        schema = json.dumps(fmt.json_schema.schema_ or {}, separators=(",", ":"))
        return (
            "Respond only with one JSON value that conforms to this JSON schema, with no "
            f"prose and no code fences: {schema}"
        )
    if isinstance(fmt, ResponseFormatJSONObject):
        return "Respond only with one valid JSON object, with no prose and no code fences."
    return None


def converse_request(
    request: ChatCompletionRequest, guardrail: Guardrail | None = None, *, stream: bool = False
) -> dict[str, Any]:
    """The keyword arguments of ``converse`` / ``converse_stream`` for an OpenAI request."""
    if request.n is not None and request.n > 1:
        raise InvalidRequestError("Bedrock returns one choice per request; set n to 1", param="n")
    if request.logprobs:
        raise InvalidRequestError("Bedrock does not return logprobs", param="logprobs")
    system, messages = _messages(request)
    if (instruction := _format_instruction(request)) is not None:
        system.append({"text": instruction})
    kwargs: dict[str, Any] = {"modelId": request.model, "messages": messages}
    if system:
        kwargs["system"] = system
    inference: dict[str, Any] = {}
    if (max_tokens := request.max_new_tokens()) is not None:
        inference["maxTokens"] = max_tokens
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if stops := request.stop_list():
        inference["stopSequences"] = stops
    if inference:
        kwargs["inferenceConfig"] = inference
    if (tool_config := _tool_config(request, messages)) is not None:
        kwargs["toolConfig"] = tool_config
    if guardrail is not None:
        gc: dict[str, Any] = {
            "guardrailIdentifier": guardrail.identifier,
            "guardrailVersion": guardrail.version,
            "trace": guardrail.trace,
        }
        if stream:
            gc["streamProcessingMode"] = "sync"
        kwargs["guardrailConfig"] = gc
    return kwargs


# --- response mapping -----------------------------------------------------------------


def _finish_reason(stop_reason: str | None) -> FinishReason:
    return _STOP_REASONS.get(stop_reason or "", "stop")


def _usage(usage: dict[str, Any] | None) -> Usage | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0))
    total = int(usage.get("totalTokens", prompt + completion))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def chat_completion_from(response: dict[str, Any], model: str) -> ChatCompletion:
    blocks = response.get("output", {}).get("message", {}).get("content", [])
    text = "".join(b["text"] for b in blocks if "text" in b)
    calls = [
        ToolCall(
            id=b["toolUse"]["toolUseId"],
            function=FunctionCall(
                name=b["toolUse"]["name"], arguments=json.dumps(b["toolUse"].get("input", {}))
            ),
        )
        for b in blocks
        if "toolUse" in b
    ]
    finish = _finish_reason(response.get("stopReason"))
    request_id = response.get("ResponseMetadata", {}).get("RequestId")
    return ChatCompletion(
        # Bedrock's request id, so a completion can be traced in AWS's logs.
        id=f"chatcmpl-{request_id}" if request_id else f"chatcmpl-{uuid.uuid4().hex}",
        model=model,
        choices=[
            ChatChoice(
                index=0,
                message=ChatCompletionMessage(content=text or None, tool_calls=calls or None),
                finish_reason=finish,
            )
        ],
        usage=_usage(response.get("usage")),
    )


async def _chunks_from(
    events: AsyncIterator[dict[str, Any]], model: str, include_usage: bool, what: str
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """ConverseStream events -> chat.completion.chunk objects."""
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    tool_index: dict[int, int] = {}  # contentBlockIndex -> tool_calls index
    finished = False

    def chunk(delta: ChoiceDelta | None, finish: FinishReason | None = None,
              usage: Usage | None = None) -> ChatCompletionChunk:
        choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
        return ChatCompletionChunk(
            id=chunk_id, created=created, model=model, choices=choices, usage=usage
        )

    with map_aws_errors(what):
        async for event in events:
            if "messageStart" in event:
                yield chunk(ChoiceDelta(role="assistant", content=""))
            elif "contentBlockStart" in event:
                start = event["contentBlockStart"]
                use = start.get("start", {}).get("toolUse")
                if use is not None:
                    index = tool_index.setdefault(start["contentBlockIndex"], len(tool_index))
                    call = ToolCallDelta(
                        index=index, id=use["toolUseId"], type="function",
                        function=ToolCallDeltaFunction(name=use["name"], arguments=""),
                    )
                    yield chunk(ChoiceDelta(tool_calls=[call]))
            elif "contentBlockDelta" in event:
                body = event["contentBlockDelta"]
                delta = body.get("delta", {})
                if "text" in delta:
                    yield chunk(ChoiceDelta(content=delta["text"]))
                elif "toolUse" in delta:
                    block = body["contentBlockIndex"]
                    index = tool_index.setdefault(block, len(tool_index))
                    args = ToolCallDeltaFunction(arguments=delta["toolUse"].get("input", ""))
                    yield chunk(ChoiceDelta(tool_calls=[ToolCallDelta(index=index,
                                                                      function=args)]))
                # reasoningContent and citations have no chat.completion.chunk field.
            elif "messageStop" in event:
                finished = True
                reason = _finish_reason(event["messageStop"].get("stopReason"))
                yield chunk(ChoiceDelta(), reason)
            elif "metadata" in event:
                usage = _usage(event["metadata"].get("usage"))
                if include_usage and usage is not None:
                    yield chunk(None, usage=usage)
    if not finished:
        raise UpstreamError(f"{what} ended the stream before messageStop")


# --- embeddings -----------------------------------------------------------------------


def _encode(vector: list[float], encoding: str | None) -> list[float] | str:
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _texts(request: EmbeddingRequest) -> list[str]:
    value = request.input
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise InvalidRequestError(
        "Bedrock embeds text only; send strings, not token ids", param="input"
    )


# --- the provider ---------------------------------------------------------------------


class BedrockProvider:
    """Inference on Amazon Bedrock (Converse, ConverseStream, InvokeModel)."""

    def __init__(self, config: BedrockConfig, client: Any) -> None:
        self.config = config
        self._client = client

    async def list_models(self) -> list[ProviderModel]:
        return [
            ProviderModel(
                provider_resource_id=m.model_id, model_type=m.model_type, metadata=m.metadata
            )
            for m in self.config.models
        ]

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        what = f"Bedrock model {request.model}"
        kwargs = converse_request(request, self.config.guardrail, stream=bool(request.stream))
        if not request.stream:
            with map_aws_errors(what):
                response = await asyncio.to_thread(self._client.converse, **kwargs)
            return chat_completion_from(response, request.model)
        # The call returns once the status line is in: errors before the first event
        # (validation, throttling, access) surface here with their own status.
        with map_aws_errors(what):
            response = await asyncio.to_thread(self._client.converse_stream, **kwargs)
        events = ThreadedEventStream(response["stream"])
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return RelayedStream(events, _chunks_from(events, request.model, include_usage, what))

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        prompt = request.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise InvalidRequestError(
                    "Bedrock completes one text prompt per request", param="prompt"
                )
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequestError("Bedrock completes text prompts only", param="prompt")
        fields = request.model_dump(
            include={"model", "max_tokens", "n", "stop", "stream", "stream_options",
                     "temperature", "top_p"},
            exclude_none=True,
        )
        chat = ChatCompletionRequest.model_validate(
            {**fields, "messages": [{"role": "user", "content": prompt}]}
        )
        result = await self.chat_completion(chat)
        if isinstance(result, ChatCompletion):
            choice = result.choices[0]
            return Completion(
                id=result.id.replace("chatcmpl-", "cmpl-", 1),
                created=result.created,
                model=result.model,
                choices=[CompletionChoice(index=0, text=choice.message.content or "",
                                          finish_reason=choice.finish_reason)],
                usage=result.usage,
            )
        return _completion_chunks(result)

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        texts = _texts(request)
        what = f"Bedrock model {request.model}"
        if request.model.startswith("cohere.embed"):
            vectors, tokens = await self._cohere(request, texts, what)
        else:
            vectors, tokens = await self._titan(request, texts, what)
        return EmbeddingList(
            model=request.model,
            data=[
                Embedding(index=i, embedding=_encode(v, request.encoding_format))
                for i, v in enumerate(vectors)
            ],
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def shutdown(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    # --- internals ---

    async def _invoke(self, model: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            response = self._client.invoke_model(
                modelId=model, body=json.dumps(body).encode(),
                contentType="application/json", accept="application/json",
            )
            payload: dict[str, Any] = json.loads(response["body"].read())
            return payload

        with map_aws_errors(what):
            try:
                return await asyncio.to_thread(call)
            except ValueError as exc:
                raise UpstreamError(f"{what} answered a body that is not JSON") from exc

    async def _titan(
        self, request: EmbeddingRequest, texts: list[str], what: str
    ) -> tuple[list[list[float]], int]:
        # Titan embeds one text per call.
        vectors, tokens = [], 0
        for text in texts:
            body: dict[str, Any] = {"inputText": text}
            if request.dimensions is not None:
                body["dimensions"] = request.dimensions
            payload = await self._invoke(request.model, body, what)
            vectors.append([float(x) for x in payload.get("embedding", [])])
            tokens += int(payload.get("inputTextTokenCount", 0))
        return vectors, tokens

    async def _cohere(
        self, request: EmbeddingRequest, texts: list[str], what: str
    ) -> tuple[list[list[float]], int]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 96):  # Cohere's batch limit on Bedrock
            body = {"texts": texts[start : start + 96], "input_type": "search_document"}
            payload = await self._invoke(request.model, body, what)
            embeddings = payload.get("embeddings", [])
            if isinstance(embeddings, dict):  # embedding_types asked: {"float": [...]}
                embeddings = embeddings.get("float", [])
            vectors += [[float(x) for x in v] for v in embeddings]
        # Cohere on Bedrock reports no token count; words are a fair stand-in.
        return vectors, sum(len(t.split()) for t in texts)


async def _completion_chunks(
    chunks: AsyncIterator[ChatCompletionChunk],
) -> AsyncGenerator[Completion, None]:
    try:
        async for chunk in chunks:
            choices = [
                CompletionChoice(index=0, text=c.delta.content or "", finish_reason=c.finish_reason)
                for c in chunk.choices
            ]
            yield Completion(
                id=chunk.id.replace("chatcmpl-", "cmpl-", 1), created=chunk.created,
                model=chunk.model, choices=choices, usage=chunk.usage,
            )
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


# --- registration ---------------------------------------------------------------------


async def _create(config: BedrockConfig, context: ProviderContext) -> BedrockProvider:
    client = await create_client("bedrock-runtime", config)
    logger.info("bedrock client ready", extra={"models": [m.model_id for m in config.models]})
    return BedrockProvider(config, client)


spec = ProviderSpec(
    api=Api.inference,
    provider_type="remote::bedrock",
    config_class=BedrockConfig,
    factory=_create,
    description="Amazon Bedrock models through the Converse API",
    extras=("aws",),
)
