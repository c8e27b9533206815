"""``remote::bedrock-guardrails``: Amazon Bedrock Guardrails through ``ApplyGuardrail``.

A shield names a guardrail: ``provider_shield_id`` is its id (or ARN) and
``params.guardrail_version`` its version (default ``DRAFT``). The conversation's text
goes to ``bedrock-runtime`` as ``ApplyGuardrail`` content blocks, ``source`` INPUT
unless the last message is the assistant's (OUTPUT). ``GUARDRAIL_INTERVENED`` is a
violation whose metadata carries the assessments, the policies that fired and the
guardrail's own output (its blocked message, or the text with PII masked).

Example run config (the guardrails listed are reported as shields)::

    providers:
      safety:
        - provider_id: bedrock-guardrails
          provider_type: remote::bedrock-guardrails
          config:
            region: us-east-1
            guardrails: [{guardrail_id: gr-abc123, version: "1"}]
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnstack.api.inference import Message, message_text
from fnstack.api.safety import (
    ModerationInput,
    ModerationResult,
    ProviderShield,
    RunShieldResponse,
    SafetyViolation,
    Shield,
)
from fnstack.errors import InvalidRequestError
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.inference._aws import create_client, map_aws_errors

__all__ = ["BedrockGuardrailsConfig", "BedrockGuardrailsProvider", "spec"]

logger = logging.getLogger(__name__)

# Bedrock's content filter types as OpenAI's moderation categories.
_FILTERS: dict[str, tuple[str, ...]] = {
    "HATE": ("hate",),
    "INSULTS": ("harassment",),
    "SEXUAL": ("sexual",),
    "VIOLENCE": ("violence",),
    "MISCONDUCT": ("illicit",),
    "PROMPT_ATTACK": (),
}
_CONFIDENCE = {"NONE": 0.0, "LOW": 0.35, "MEDIUM": 0.65, "HIGH": 0.95}


class GuardrailRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guardrail_id: str = Field(min_length=1)
    version: str = "DRAFT"


class BedrockGuardrailsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(default=None, description="AWS region; default: the SDK's")
    endpoint_url: str | None = Field(default=None, description="Another endpoint (tests, VPC)")
    guardrails: list[GuardrailRef] = Field(default=[], description="reported as shields")
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    max_connections: int = Field(default=50, ge=1)
    violation_level: Literal["info", "warn", "error"] = "error"

    @field_validator("region", "endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class ShieldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guardrail_version: str = "DRAFT"
    source: Literal["INPUT", "OUTPUT"] | None = None


def _image_block(url: str) -> dict[str, Any] | None:
    # Guardrails take png/jpeg bytes; URLs they would fetch are not supported.
    header, sep, data = url.partition(",")
    if not (sep and header.startswith("data:image/") and header.endswith(";base64")):
        return None
    fmt = header[len("data:image/"):-len(";base64")].replace("jpg", "jpeg")
    if fmt not in ("png", "jpeg"):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidRequestError("an image_url is not valid base64", param="input") from None
    return {"image": {"format": fmt, "source": {"bytes": raw}}}


class BedrockGuardrailsProvider:
    """Bedrock Guardrails (ApplyGuardrail)."""

    def __init__(self, config: BedrockGuardrailsConfig, client: Any) -> None:
        self.config = config
        self._client = client

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def list_shields(self) -> list[ProviderShield]:
        return [ProviderShield(provider_resource_id=g.guardrail_id,
                               params={"guardrail_version": g.version})
                for g in self.config.guardrails]

    def _params(self, shield: Shield, params: dict[str, Any]) -> ShieldParams:
        try:
            return ShieldParams.model_validate({**shield.params, **params})
        except ValueError as exc:
            raise InvalidRequestError(
                f"remote::bedrock shield params: {exc}; it takes guardrail_version and source",
                param="params",
            ) from None

    async def apply(self, shield: Shield, source: str, content: list[dict[str, Any]],
                    version: str) -> dict[str, Any]:
        what = f"Bedrock guardrail {shield.provider_resource_id}:{version}"
        with map_aws_errors(what):
            response: dict[str, Any] = await asyncio.to_thread(
                self._client.apply_guardrail,
                guardrailIdentifier=shield.provider_resource_id,
                guardrailVersion=version,
                source=source,
                content=content,
            )
        return response

    async def run_shield(
        self, shield: Shield, messages: list[Message], params: dict[str, Any]
    ) -> RunShieldResponse:
        p = self._params(shield, params)
        texts = [message_text(m.content) for m in messages]
        if not any(texts):
            return RunShieldResponse()
        source = p.source or ("OUTPUT" if messages[-1].role == "assistant" else "INPUT")
        content = [{"text": {"text": t}} for t in texts if t]
        response = await self.apply(shield, source, content, p.guardrail_version)
        if response.get("action") != "GUARDRAIL_INTERVENED":
            return RunShieldResponse()
        outputs = [o.get("text", "") for o in response.get("outputs", [])]
        kinds = _fired(response.get("assessments", []))
        return RunShieldResponse(violation=SafetyViolation(
            violation_level=self.config.violation_level,
            user_message=(outputs[0] if outputs and outputs[0] else
                          "The guardrail blocked this content."),
            metadata={
                "shield_id": shield.identifier,
                "guardrail_id": shield.provider_resource_id,
                "guardrail_version": p.guardrail_version,
                "action_reason": response.get("actionReason"),
                "violation_type": ",".join(kinds),
                "categories": kinds,
                "outputs": outputs,
                "assessments": response.get("assessments", []),
            },
        ))

    async def moderate(
        self, shield: Shield, inputs: list[ModerationInput]
    ) -> list[ModerationResult]:
        p = self._params(shield, {})
        results = []
        for item in inputs:
            content: list[dict[str, Any]] = [{"text": {"text": item.text}}] if item.text else []
            images = [b for b in (_image_block(u) for u in item.image_urls) if b]
            content += images
            if not content:
                results.append(ModerationResult.of({}, set()))
                continue
            response = await self.apply(shield, p.source or "INPUT", content,
                                         p.guardrail_version)
            scores: dict[str, float] = {}
            flagged: set[str] = set()
            for a in response.get("assessments", []):
                for f in (a.get("contentPolicy") or {}).get("filters", []):
                    names = _FILTERS.get(f.get("type", ""), ()) or (f"bedrock/{f.get('type')}",)
                    for n in names:
                        scores[n] = max(scores.get(n, 0.0),
                                        _CONFIDENCE.get(f.get("confidence", "NONE"), 0.0))
                        if f.get("action") == "BLOCKED" or f.get("detected"):
                            flagged.add(n)
            if response.get("action") == "GUARDRAIL_INTERVENED":
                flagged.update(f"bedrock/{k}" for k in _fired(response.get("assessments", []))
                               if not k.startswith("content"))
                if not flagged:
                    flagged.add("bedrock/intervened")
            types: list[Literal["text", "image"]] = ["text", "image"] if images else ["text"]
            results.append(ModerationResult.of(scores, flagged, types))
        return results

    async def shutdown(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


def _fired(assessments: list[dict[str, Any]]) -> list[str]:
    """The policies that acted, as ``content/VIOLENCE``, ``topic/Finance``, ``pii/EMAIL``..."""
    out: list[str] = []

    def add(kind: str, item: dict[str, Any]) -> None:
        if item.get("action", "NONE") != "NONE" and kind not in out:
            out.append(kind)

    for a in assessments:
        for t in (a.get("topicPolicy") or {}).get("topics", []):
            add(f"topic/{t.get('name')}", t)
        for f in (a.get("contentPolicy") or {}).get("filters", []):
            add(f"content/{f.get('type')}", f)
        words = a.get("wordPolicy") or {}
        for w in words.get("customWords", []):
            add("word/custom", w)
        for w in words.get("managedWordLists", []):
            add(f"word/{w.get('type')}", w)
        sensitive = a.get("sensitiveInformationPolicy") or {}
        for e in sensitive.get("piiEntities", []):
            add(f"pii/{e.get('type')}", e)
        for r in sensitive.get("regexes", []):
            add(f"regex/{r.get('name')}", r)
        for g in (a.get("contextualGroundingPolicy") or {}).get("filters", []):
            add(f"grounding/{g.get('type')}", g)
    return out


async def _create(config: BedrockGuardrailsConfig, context: ProviderContext
                  ) -> BedrockGuardrailsProvider:
    client = await create_client("bedrock-runtime", config)
    return BedrockGuardrailsProvider(config, client)


spec = ProviderSpec(
    api=Api.safety,
    provider_type="remote::bedrock-guardrails",
    config_class=BedrockGuardrailsConfig,
    factory=_create,
    description="Amazon Bedrock Guardrails (ApplyGuardrail)",
    extras=("aws",),
)
