"""``inline::rules``: regex and PII detection with redaction, in-process and instant.

Finds e-mail addresses, phone numbers, payment card numbers (Luhn-checked, known
issuer prefixes), US social security numbers, secrets (AWS access key ids and secret
keys, private key blocks, API-key shaped tokens), blocked terms and custom regexes.
A finding is a violation (``violation_level`` as configured); its metadata carries each
finding's kind and span and the text with every finding replaced by ``[KIND]``.

Config (provider defaults) and a shield's ``params`` (per shield, then per call) take
the same fields::

    providers:
      safety:
        - provider_id: rules
          provider_type: inline::rules
          config:
            pii: [email, phone, credit_card, us_ssn, aws_access_key, aws_secret_key,
                  private_key, api_key]
            blocked_terms: [project-x]
            patterns: {ticket: "TICKET-\\d{6}"}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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

__all__ = ["Finding", "RulesConfig", "RulesProvider", "find", "luhn_ok", "redact", "spec"]

PiiKind = Literal[
    "email", "phone", "credit_card", "us_ssn", "aws_access_key", "aws_secret_key",
    "private_key", "api_key",
]
ALL_PII: tuple[PiiKind, ...] = (
    "email", "phone", "credit_card", "us_ssn", "aws_access_key", "aws_secret_key",
    "private_key", "api_key",
)
SECRETS = frozenset({"aws_access_key", "aws_secret_key", "private_key", "api_key"})


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pii: list[PiiKind] = Field(default_factory=lambda: list(ALL_PII),
                               description="the PII and secret kinds to find")
    blocked_terms: list[str] = Field(default=[], description="whole words, case-insensitive")
    patterns: dict[str, str] = Field(default={}, description="name -> regex (Python syntax)")
    violation_level: Literal["info", "warn", "error"] = "error"
    user_message: str = "The message contains {kinds}; remove it and try again."

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from None
        return value

    @field_validator("blocked_terms")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not t.strip() for t in value):
            raise ValueError("blocked terms must not be empty")
        return value


@dataclass(frozen=True)
class Finding:
    kind: str  # a PII kind, "blocked_term" or "custom/<name>"
    start: int
    end: int


# --- detectors -----------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
)
# Digit groups joined by one separator each, an optional +country code or (area code).
_PHONE = re.compile(
    r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
    r"(?![\w-]|\.\d)"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_AWS_ACCESS = re.compile(
    r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)"
    r"[A-Z2-7]{16}(?![A-Z0-9])"
)
# A secret key is 40 base64 characters: only next to a name that says so, or a hex
# digest / base64 blob would match too.
_AWS_SECRET = re.compile(
    r"(?i:aws|secret)[\w .\"'-]{0,30}?(?:[:=]|=>)\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"
)
_API_KEY = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-(?:api\d\d-)?|live_|test_)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"  # GitHub
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|fns-[0-9a-f]{18}-[A-Za-z0-9_-]{43}"  # fnstack's own keys
    r")(?![\w-])"
    # A value assigned to something named like a credential.
    r"|(?i:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password|passwd)"
    r"[\"']?\s*(?:[:=]|=>)\s*[\"']?([A-Za-z0-9_\-./+=]{16,})"
    r"|(?i:bearer)\s+([A-Za-z0-9_\-./+=]{16,})"
)
_ISSUERS = re.compile(
    r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|5|4[4-9])|3(?:0[0-5]|[68])|35)"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (payment card numbers carry one)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _ISSUERS.match(digits) and luhn_ok(digits):
            yield m.span()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for m in _PHONE.finditer(text):
        s = m.group()
        digits = sum(c.isdigit() for c in s)
        if s.startswith("+"):
            ok = 8 <= digits <= 15
        else:
            # Without a country code: 10 digits and more (NANP, most national formats),
            # never a dotted IP address or a date.
            ok = 10 <= digits <= 13 and not _IPV4.match(s) and not _DATE.match(s)
        if ok:
            yield m.span()


def _spans(pattern: re.Pattern[str]) -> Callable[[str], Iterator[tuple[int, int]]]:
    def spans(text: str) -> Iterator[tuple[int, int]]:
        for m in pattern.finditer(text):
            # A pattern with a capturing group finds its secret inside a longer match.
            if m.lastindex:
                yield m.span(m.lastindex)
            else:
                yield m.span()

    return spans


# Order matters where matches overlap: the earlier kind keeps the span.
_DETECTORS: dict[PiiKind, Callable[[str], Iterator[tuple[int, int]]]] = {
    "private_key": _spans(_PRIVATE_KEY),
    "aws_access_key": _spans(_AWS_ACCESS),
    "aws_secret_key": _spans(_AWS_SECRET),
    "api_key": _spans(_API_KEY),
    "email": _spans(_EMAIL),
    "credit_card": _cards,
    "us_ssn": _spans(_SSN),
    "phone": _phones,
}


@cache
def _term_pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for t in sorted(terms, key=len, reverse=True):
        esc = re.escape(t.strip())
        # Whole words: no word character may touch a term's word-character ends.
        left = r"(?<!\w)" if re.match(r"\w", t.strip()) else ""
        right = r"(?!\w)" if re.search(r"\w$", t.strip()) else ""
        parts.append(left + esc + right)
    return re.compile("|".join(parts), re.IGNORECASE)


def find(text: str, config: RulesConfig) -> list[Finding]:
    """Every finding in ``text``, by position; overlaps resolved in detector order."""
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, start: int, end: int) -> None:
        if start == end or any(start < e and s < end for s, e in taken):
            return
        taken.append((start, end))
        found.append(Finding(kind, start, end))

    wanted = set(config.pii)
    for kind, detect in _DETECTORS.items():
        if kind in wanted:
            for start, end in detect(text):
                add(kind, start, end)
    if config.blocked_terms:
        for m in _term_pattern(tuple(config.blocked_terms)).finditer(text):
            add("blocked_term", *m.span())
    for name, pattern in config.patterns.items():
        for m in re.finditer(pattern, text):
            add(f"custom/{name}", *m.span())
    return sorted(found, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    out, at = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[at:f.start])
        out.append(f"[{f.kind.upper()}]")
        at = f.end
    out.append(text[at:])
    return "".join(out)


def category(kind: str) -> str:
    """The moderation category of a finding kind: ``pii/email``, ``secrets/api_key``..."""
    if kind in SECRETS:
        return f"secrets/{kind}"
    if kind in ALL_PII:
        return f"pii/{kind}"
    return kind


class RulesProvider:
    """Regex and PII detection."""

    def __init__(self, config: RulesConfig) -> None:
        self.config = config

    def _config(self, *layers: dict[str, Any]) -> RulesConfig:
        merged = self.config.model_dump()
        for layer in layers:
            merged.update(layer)
        try:
            return RulesConfig.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequestError(
                f"params.{where}: {first['msg']} (inline::rules takes pii, blocked_terms, "
                "patterns, violation_level, user_message)",
                param=f"params.{where}",
            ) from None

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def list_shields(self) -> list[ProviderShield]:
        return []

    async def run_shield(
        self, shield: Shield, messages: list[Message], params: dict[str, Any]
    ) -> RunShieldResponse:
        if "patterns" in params:
            # Any caller sends a call's params; a regex from one could backtrack for
            # minutes on the event loop. Patterns come from the config or the shield
            # (registered by an admin).
            raise InvalidRequestError(
                "patterns are set on the shield (POST /v1/shields params), not per call",
                param="params.patterns",
            )
        config = self._config(shield.params, params)
        findings: list[dict[str, Any]] = []
        redacted: list[str] = []
        kinds: list[str] = []
        for i, m in enumerate(messages):
            text = message_text(m.content)
            found = find(text, config)
            redacted.append(redact(text, found))
            for f in found:
                findings.append({"type": f.kind, "message_index": i, "start": f.start,
                                 "end": f.end})
                if f.kind not in kinds:
                    kinds.append(f.kind)
        if not findings:
            return RunShieldResponse()
        return RunShieldResponse(
            violation=SafetyViolation(
                violation_level=config.violation_level,
                # replace, not format: a user message is free text, braces and all.
                user_message=config.user_message.replace("{kinds}", _names(kinds)),
                metadata={
                    "shield_id": shield.identifier,
                    "violation_type": ",".join(kinds),
                    "categories": [category(k) for k in kinds],
                    "findings": findings,
                    "redacted_messages": redacted,
                    # The last message, redacted: the one a guardrail usually checks.
                    "redacted_text": redacted[-1],
                },
            )
        )

    async def moderate(
        self, shield: Shield, inputs: list[ModerationInput]
    ) -> list[ModerationResult]:
        config = self._config(shield.params)
        results = []
        for item in inputs:
            flagged = {category(f.kind) for f in find(item.text, config)}
            results.append(ModerationResult.of({}, flagged, ["text"]))
        return results

    async def shutdown(self) -> None:
        return None


def _names(kinds: list[str]) -> str:
    words = {"email": "an e-mail address", "phone": "a phone number",
             "credit_card": "a payment card number", "us_ssn": "a social security number",
             "aws_access_key": "an AWS access key", "aws_secret_key": "an AWS secret key",
             "private_key": "a private key", "api_key": "an API key or token",
             "blocked_term": "a blocked term"}
    names = [words.get(k, f"a match of {k.removeprefix('custom/')}") for k in kinds]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


async def _create(config: RulesConfig, context: ProviderContext) -> RulesProvider:
    return RulesProvider(config)


spec = ProviderSpec(
    api=Api.safety,
    provider_type="inline::rules",
    config_class=RulesConfig,
    factory=_create,
    description="regex and PII/secret detection with redaction (no model, no network)",
)
