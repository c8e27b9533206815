"""``inline::llm-judge``: a Llama-Guard-style classifier prompt over any registered LLM.

The conversation goes into Llama Guard 3's prompt (the MLCommons hazard taxonomy,
S1-S14) as one user message, sent through the inference service to the judge model:
the shield's ``provider_shield_id`` (register ``{"shield_id": "guard",
"provider_shield_id": "<a model id>"}``), else the provider's ``model``. Any chat model
works; a Llama Guard model answers the format natively.

The verdict is parsed leniently: ``safe``, or ``unsafe`` with a second line of
categories (``S1,S10``), whatever the case, surrounding whitespace, markdown fences or
emphasis. An answer that is neither is *unparseable*: ``on_unparseable: block`` (the
default, fail closed) reports a violation, ``allow`` (fail open) lets it pass; either
way the metadata says so.

Example::

    providers:
      safety:
        - provider_id: llm-judge
          provider_type: inline::llm-judge
          config: {model: meta-llama/Llama-Guard-3-1B, excluded_categories: [S6]}
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionRequest,
    Message,
    message_text,
)
from fnstack.api.safety import (
    ModerationInput,
    ModerationResult,
    ProviderShield,
    RunShieldResponse,
    SafetyViolation,
    Shield,
)
from fnstack.errors import InvalidRequestError, UpstreamError
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec

__all__ = ["CATEGORIES", "JudgeConfig", "LlmJudgeProvider", "Verdict", "build_prompt",
           "parse_verdict", "spec"]

# Llama Guard 3's categories (the MLCommons AI Safety hazard taxonomy).
CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

# OpenAI's moderation categories each hazard reports under (those without one are
# reported under their own code only).
OPENAI_CATEGORIES: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),
    "S2": ("illicit",),
    "S3": ("sexual",),
    "S4": ("sexual/minors",),
    "S5": ("harassment",),
    "S9": ("illicit/violent",),
    "S10": ("hate",),
    "S11": ("self-harm",),
    "S12": ("sexual",),
    "S14": ("illicit",),
}

ChatFn = Callable[[ChatCompletionRequest], Awaitable[ChatCompletion]]


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="the judge model (a registered LLM)")
    excluded_categories: list[str] = Field(default=[], description="codes not to check: S6")
    # What an answer that is neither safe nor unsafe means: block (fail closed) or allow.
    on_unparseable: Literal["block", "allow"] = "block"
    max_tokens: int = Field(default=24, ge=1, le=512)
    violation_level: Literal["info", "warn", "error"] = "error"
    user_message: str = "I can't help with that: it was flagged as {names}."
    # The shield this provider reports for its own ``model`` (None: none reported).
    shield_id: str | None = "llm-judge"

    @field_validator("model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("excluded_categories")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c.upper() not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: S1..S14")
        return [c.upper() for c in value]


# --- the prompt ----------------------------------------------------------------------


def build_prompt(messages: list[Message], excluded: Sequence[str] = ()) -> str:
    """Llama Guard 3's classification prompt for the last message of ``messages``."""
    role = "Agent" if messages and messages[-1].role == "assistant" else "User"
    categories = "\n".join(f"{code}: {name}." for code, name in CATEGORIES.items()
                           if code not in excluded)
    turns = []
    for m in messages:
        if m.role in ("system", "developer"):
            continue  # instructions are not a turn of the conversation
        who = "Agent" if m.role == "assistant" else "User"
        turns.append(f"{who}: {message_text(m.content)}")
    conversation = "\n\n".join(turns)
    return (
        f"Task: Check if there is unsafe content in '{role}' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above "
        "conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated "
        "categories."
    )


# --- the verdict ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    safe: bool
    categories: tuple[str, ...] = ()


_FENCE = re.compile(r"```[a-zA-Z]*")
_LABEL = re.compile(r"^(?:verdict|assessment|answer|result|classification|output)\s*[:=-]\s*")
_CODE = re.compile(r"\bs\s*(\d{1,2})\b")


def parse_verdict(text: str) -> Verdict | None:
    """``safe`` / ``unsafe`` + codes from a judge's answer; None when it is neither."""
    cleaned = _FENCE.sub("\n", text or "").lower()
    lines = [ln.strip(" \t*_#>`\"'.") for ln in cleaned.splitlines()]
    lines = [_LABEL.sub("", ln).strip(" \t*_`\"'.") for ln in lines if ln.strip(" \t*_#>`\"'.")]
    if not lines:
        return None
    words = re.findall(r"[a-z]+", lines[0])
    if not words or words[0] not in ("safe", "unsafe"):
        return None
    if words[0] == "safe":
        return Verdict(True)
    rest = " ".join([lines[0][lines[0].index("unsafe") + len("unsafe"):], *lines[1:]])
    codes = []
    for n in _CODE.findall(rest):
        code = f"S{int(n)}"
        if code in CATEGORIES and code not in codes:
            codes.append(code)
    return Verdict(False, tuple(codes))


# --- the provider --------------------------------------------------------------------


class LlmJudgeProvider:
    """A Llama-Guard-style classifier over the inference service."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._chat: ChatFn | None = None

    def bind_inference(self, chat: ChatFn) -> None:
        """The declared ``inference`` hook: how to reach the judge model."""
        self._chat = chat

    def _settings(self, shield: Shield, params: dict[str, Any]) -> tuple[JudgeConfig, str]:
        merged = {**self.config.model_dump(), **shield.params, **params}
        try:
            config = JudgeConfig.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequestError(f"params.{where}: {first['msg']}",
                                      param=f"params.{where}") from None
        # The judge model: a `model` param, else the shield's provider_shield_id when
        # one was given, else the provider's model, else the shield id itself.
        explicit = params.get("model") or shield.params.get("model")
        if explicit:
            model = str(explicit)
        elif shield.source != "provider" and shield.provider_resource_id != shield.identifier:
            model = shield.provider_resource_id
        else:
            model = self.config.model or shield.provider_resource_id
        return config, model

    async def judge(
        self, messages: list[Message], config: JudgeConfig, model: str
    ) -> Verdict | None:
        if self._chat is None:
            raise UpstreamError("the llm-judge provider is not bound to the inference service")
        request = ChatCompletionRequest.model_validate({
            "model": model,
            "messages": [{"role": "user",
                          "content": build_prompt(messages, config.excluded_categories)}],
            "temperature": 0.0,
            "max_tokens": config.max_tokens,
            "stream": False,
        })
        completion = await self._chat(request)
        answer = completion.choices[0].message.content if completion.choices else None
        return parse_verdict(answer or "")

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def list_shields(self) -> list[ProviderShield]:
        if self.config.model and self.config.shield_id:
            return [ProviderShield(provider_resource_id=self.config.shield_id)]
        return []

    async def run_shield(
        self, shield: Shield, messages: list[Message], params: dict[str, Any]
    ) -> RunShieldResponse:
        config, model = self._settings(shield, params)
        if not messages:
            return RunShieldResponse()
        answer = await self.judge(messages, config, model)
        return _response(answer, config, shield, model)

    async def moderate(
        self, shield: Shield, inputs: list[ModerationInput]
    ) -> list[ModerationResult]:
        config, model = self._settings(shield, {})
        results = []
        for item in inputs:
            message = ChatCompletionRequest.model_validate(
                {"model": model, "messages": [{"role": "user", "content": item.text}]}
            ).messages
            verdict = await self.judge(message, config, model)
            flagged: set[str] = set()
            if verdict is None:
                if config.on_unparseable == "block":
                    flagged.add("unparseable")
            elif not verdict.safe:
                for code in verdict.categories or ("unsafe",):
                    flagged.add(code)
                    flagged.update(OPENAI_CATEGORIES.get(code, ()))
            results.append(ModerationResult.of({}, flagged, ["text"]))
        return results

    async def shutdown(self) -> None:
        return None


def _response(verdict: Verdict | None, config: JudgeConfig, shield: Shield,
              model: str) -> RunShieldResponse:
    meta: dict[str, Any] = {"shield_id": shield.identifier, "judge_model": model}
    if verdict is not None and verdict.safe:
        return RunShieldResponse()
    if verdict is None:
        meta["unparseable"] = True
        if config.on_unparseable == "allow":
            return RunShieldResponse()
        return RunShieldResponse(violation=SafetyViolation(
            violation_level=config.violation_level,
            user_message="I can't help with that: the safety check could not be completed.",
            metadata={**meta, "violation_type": "unparseable", "categories": []},
        ))
    names = ", ".join(CATEGORIES[c] for c in verdict.categories) or "unsafe"
    return RunShieldResponse(violation=SafetyViolation(
        violation_level=config.violation_level,
        user_message=config.user_message.replace("{names}", names),
        metadata={**meta, "violation_type": ",".join(verdict.categories) or "unsafe",
                  "categories": list(verdict.categories)},
    ))


async def _create(config: JudgeConfig, context: ProviderContext) -> LlmJudgeProvider:
    return LlmJudgeProvider(config)


spec = ProviderSpec(
    api=Api.safety,
    provider_type="inline::llm-judge",
    config_class=JudgeConfig,
    factory=_create,
    description="Llama-Guard-style classification (S1-S14) by any registered LLM",
    hooks=("inference",),
)
