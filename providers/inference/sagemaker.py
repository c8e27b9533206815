"""``remote::sagemaker``: a SageMaker real-time endpoint running fnstack's inference image.

The container speaks the OpenAI wire format on ``/invocations``
(`fnstack_dev.sagemaker_server`), so this provider is a relay over SageMaker Runtime:

- InvokeEndpoint: the body is the OpenAI request JSON; the answer a ChatCompletion,
  Completion or EmbeddingList;
- InvokeEndpointWithResponseStream: PayloadPart events carry the container's SSE bytes,
  cut wherever SageMaker pleases (mid-line, mid-UTF-8 character): `SSEEvents`
  reassembles lines before they are parsed.

boto3 calls run in threads; a stream's EventStream is relayed by `ThreadedEventStream`.
Errors cross one boundary: a ModelError carries the container's own status and body
(``OriginalStatusCode``, ``OriginalMessage``), which map back to the error the
container raised.

Example run config::

    providers:
      inference:
        - provider_id: sagemaker
          provider_type: remote::sagemaker
          config:
            endpoint_name: fnstack-smollm2
            region: us-east-1
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from fnstack.errors import (
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UnprocessableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.inference._aws import (
    RelayedStream,
    ThreadedEventStream,
    create_client,
    map_aws_errors,
)
from providers.inference._sse import QUOTE, SSEEvents, error_fields, finishes, parse_chunk

__all__ = ["SageMakerConfig", "SageMakerProvider", "spec"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


class SageMakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_name: str = Field(min_length=1, description="The SageMaker endpoint to invoke")
    region: str | None = Field(default=None, description="AWS region; default: the SDK's")
    endpoint_url: str | None = Field(default=None, description="Another endpoint (tests, VPC)")
    inference_component: str | None = Field(
        default=None, description="Inference component to target on a shared endpoint"
    )
    model_id: str = Field(
        default="SmolLM2-135M-Instruct", description="The model id the container serves"
    )
    embedding_model_id: str | None = Field(
        default=None, description="An embedding model the container also serves"
    )
    embedding_dimension: int | None = Field(default=None, ge=1)
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0, description="Seconds; between parts too")
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per call, the first included (botocore)"
    )
    max_connections: int = Field(default=50, ge=1)

    @field_validator("region", "endpoint_url", "inference_component", "embedding_model_id",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


# --- errors ---------------------------------------------------------------------------


def _from_status(status: int, body: str, endpoint: str) -> FnstackError:
    """The error the container answered with, rebuilt from its status and body."""
    message, param, code = error_fields(body)
    if status == 429:
        return RateLimitError(f"endpoint {endpoint} is rate limiting: {message}", code=code)
    if status in (408, 504):
        return UpstreamTimeoutError(f"endpoint {endpoint} timed out: {message}")
    cls: type[FnstackError] | None = {
        400: InvalidRequestError,
        404: NotFoundError,
        413: PayloadTooLargeError,
        422: UnprocessableError,
    }.get(status)
    if cls is not None:
        return cls(message, param=param, code=code)
    if 400 <= status < 500:
        return InvalidRequestError(f"endpoint {endpoint} answered {status}: {message}")
    return UpstreamError(f"endpoint {endpoint} answered {status}: {message}")


def _classifier(endpoint: str) -> Any:
    def classify(code: str, message: str, response: dict[str, Any]) -> FnstackError | None:
        if code == "ModelError":
            original = response.get("OriginalStatusCode")
            if isinstance(original, int):
                return _from_status(original, str(response.get("OriginalMessage", "")), endpoint)
            return UpstreamError(f"the model in endpoint {endpoint} failed: {message}")
        if code == "ValidationError":
            if "not found" in message.lower() and "endpoint" in message.lower():
                # The caller cannot fix that: the run config names a missing endpoint.
                return UpstreamError(
                    f"{message}; check endpoint_name and region in the provider config"
                )
            return InvalidRequestError(f"endpoint {endpoint} rejected the request: {message}")
        if code in ("ServiceUnavailable", "InternalFailure", "InternalDependencyException"):
            return UpstreamError(f"SageMaker failed on endpoint {endpoint} ({code}): {message}")
        return None

    return classify


# --- SSE over PayloadParts ------------------------------------------------------------


async def _sse_chunks(
    parts: AsyncIterator[dict[str, Any]], model: type[T], what: str, classify: Any
) -> AsyncGenerator[T, None]:
    events = SSEEvents()
    finished = False
    with map_aws_errors(what, classify):
        async for event in parts:
            part = event.get("PayloadPart", {}).get("Bytes")
            if not part:
                continue
            for kind, payload in events.feed(part):
                if payload.strip() == "[DONE]":
                    return
                chunk = parse_chunk(model, kind, payload, what)
                finished = finished or finishes(chunk)
                yield chunk
    for kind, payload in events.finish():
        if payload.strip() == "[DONE]":
            return
        yield parse_chunk(model, kind, payload, what)
        finished = True
    if not finished:
        raise UpstreamError(f"{what} ended the stream before it was complete (no [DONE])")


# --- the provider ---------------------------------------------------------------------


class SageMakerProvider:
    """Inference on a SageMaker endpoint that speaks the OpenAI wire format."""

    def __init__(self, config: SageMakerConfig, client: Any) -> None:
        self.config = config
        self._client = client
        self._what = f"SageMaker endpoint {config.endpoint_name}"
        self._classify = _classifier(config.endpoint_name)

    async def list_models(self) -> list[ProviderModel]:
        models = [ProviderModel(provider_resource_id=self.config.model_id)]
        if self.config.embedding_model_id is not None:
            metadata: dict[str, Any] = {}
            if self.config.embedding_dimension is not None:
                metadata["embedding_dimension"] = self.config.embedding_dimension
            models.append(
                ProviderModel(
                    provider_resource_id=self.config.embedding_model_id,
                    model_type="embedding",
                    metadata=metadata,
                )
            )
        return models

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        if request.stream:
            return await self._stream(request, ChatCompletionChunk)
        return await self._invoke(request, ChatCompletion)

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        if request.stream:
            return await self._stream(request, Completion)
        return await self._invoke(request, Completion)

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        return await self._invoke(request, EmbeddingList)

    async def shutdown(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    # --- internals ---

    def _args(self, request: BaseModel) -> dict[str, Any]:
        body = request.model_dump(mode="json", exclude_none=True, by_alias=True)
        args: dict[str, Any] = {
            "EndpointName": self.config.endpoint_name,
            "Body": json.dumps(body).encode(),
            "ContentType": "application/json",
        }
        if self.config.inference_component is not None:
            args["InferenceComponentName"] = self.config.inference_component
        return args

    async def _invoke(self, request: BaseModel, model: type[T]) -> T:
        def call() -> bytes:
            response = self._client.invoke_endpoint(Accept="application/json",
                                                    **self._args(request))
            body: bytes = response["Body"].read()
            return body

        with map_aws_errors(self._what, self._classify):
            content = await asyncio.to_thread(call)
        try:
            return model.model_validate_json(content)
        except ValidationError as exc:
            raise UpstreamError(
                f"{self._what} answered something that is not an OpenAI {model.__name__}: "
                f"{content[:QUOTE].decode('utf-8', 'replace')!r}"
            ) from exc

    async def _stream(self, request: BaseModel, model: type[T]) -> RelayedStream:
        # Errors before the first part (ModelError with the container's status,
        # validation, throttling) surface here, before the caller's stream starts.
        with map_aws_errors(self._what, self._classify):
            response = await asyncio.to_thread(
                self._client.invoke_endpoint_with_response_stream,
                Accept="text/event-stream",
                **self._args(request),
            )
        events = ThreadedEventStream(response["Body"])
        return RelayedStream(events, _sse_chunks(events, model, self._what, self._classify))


# --- registration ---------------------------------------------------------------------


async def _create(config: SageMakerConfig, context: ProviderContext) -> SageMakerProvider:
    return SageMakerProvider(config, await create_client("sagemaker-runtime", config))


spec = ProviderSpec(
    api=Api.inference,
    provider_type="remote::sagemaker",
    config_class=SageMakerConfig,
    factory=_create,
    description="A SageMaker real-time endpoint running fnstack's OpenAI-wire inference image",
    extras=("aws",),
)

