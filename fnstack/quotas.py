"""Quotas: requests and tokens per principal (or per attribute value) per fixed window.

Configured in the run config; none by default::

    quotas:
      rules:
        - {scope: principal, requests: 60, window_s: 60}            # each principal
        - {scope: principal, match: batch-bot, tokens: 2000000, window_s: 86400}
        - {scope: "attribute:teams", tokens: 500000, window_s: 3600}  # each team, shared
        - {scope: "attribute:teams", match: red, requests: 10, window_s: 1}

A rule applies to a caller when its scope finds a subject: ``principal`` is the caller's
principal; ``attribute:<name>`` is each value of the caller's attribute (a member of two
teams counts against both teams' budgets; a caller without the attribute is not
limited by the rule). ``match`` narrows the rule to one principal or value.

Each (rule, subject, window) is one kv counter record ``{requests, tokens}`` under
``quota/...``, counted with `KVStore.incr` (atomic on every backend), keyed by the
window's start (windows are aligned to the epoch) and expiring with its window::

    check_request  incr(requests +1, limits: requests <= R, tokens <= T - 1)  per rule
                     refused -> 429, and the rules already counted are given back
    add_tokens     incr(tokens +n)  per rule with a token budget, after the response
    check_tokens   read: 429 when tokens >= T (check_request checks this already)

The token budget is checked before a request and charged after it, so one request may
overshoot it; the next one is refused until the window ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fnstack.errors import RateLimitError
from fnstack.storage.base import Owner

if TYPE_CHECKING:
    from fnstack.storage import KVStore, Stores

__all__ = ["QuotaConfig", "QuotaRule", "Quotas"]

PREFIX = "quota/"
FALLBACK_STORE = "registry"
STORE = "quotas"


class QuotaRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str = Field(description='"principal" or "attribute:<name>"')
    match: str | None = Field(default=None, min_length=1)
    requests: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    window_s: int = Field(ge=1, le=366 * 86400)
    description: str | None = None

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        kind, sep, name = value.partition(":")
        if value == "principal" or (kind == "attribute" and sep and name.strip()):
            return value
        raise ValueError(
            f"unknown quota scope {value!r}; use 'principal' or 'attribute:<name>' "
            "(e.g. attribute:teams)"
        )

    @model_validator(mode="after")
    def _limits(self) -> QuotaRule:
        if self.requests is None and self.tokens is None:
            raise ValueError("a quota rule needs `requests`, `tokens` or both")
        return self

    @property
    def attribute(self) -> str | None:
        return None if self.scope == "principal" else self.scope.partition(":")[2]

    def subjects(self, user: Owner) -> list[str]:
        """Whom this rule counts for ``user``: its principal, or its attribute values."""
        name = self.attribute
        if name is None:
            found = [user.principal]
        else:
            values = user.attributes.get(name, [])
            found = [values] if isinstance(values, str) else list(dict.fromkeys(values))
        return found if self.match is None else [s for s in found if s == self.match]

    def describe(self, subject: str) -> str:
        who = f"principal {subject!r}" if self.attribute is None else (
            f"{self.attribute} {subject!r}"
        )
        return f"{who} per {self.window_s} s" + (
            f" ({self.description})" if self.description else ""
        )


class QuotaConfig(BaseModel):
    """The run config's ``quotas``: no rules, no limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[QuotaRule] = []

    @field_validator("rules")
    @classmethod
    def _distinct(cls, rules: list[QuotaRule]) -> list[QuotaRule]:
        # Rules with the same scope, match and window would share one counter record.
        seen: set[tuple[str, str | None, int]] = set()
        for i, rule in enumerate(rules):
            ident = (rule.scope, rule.match, rule.window_s)
            if ident in seen:
                raise ValueError(
                    f"rules[{i}] repeats scope {rule.scope!r}, match {rule.match!r} and "
                    f"window_s {rule.window_s}: put both limits in one rule"
                )
            seen.add(ident)
        return rules


@dataclass(frozen=True, slots=True)
class _Counter:
    """One rule's counter for one subject in the current window."""

    rule: QuotaRule
    subject: str
    key: str
    window_end: float
    owner: Owner | None

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.window_end - now))


class Quotas:
    """Counts requests and tokens against the configured rules in a kv store."""

    def __init__(
        self,
        config: QuotaConfig,
        store: KVStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._request_rules = tuple(config.rules)
        self._token_rules = tuple(r for r in config.rules if r.tokens is not None)

    @classmethod
    def open(cls, config: QuotaConfig, stores: Stores, store: str | None = None) -> Quotas:
        """On the kv store named ``store``: by default ``quotas`` when the run config
        declares it, else ``registry``."""
        name = store or (STORE if stores.has(STORE) else FALLBACK_STORE)
        return cls(config, stores.kv(name))

    @property
    def enabled(self) -> bool:
        return bool(self.config.rules)

    async def check_request(self, user: Owner) -> None:
        """Count one request of ``user``; RateLimitError (429) when a request quota is
        spent or a token budget is used up. A refused request counts nowhere."""
        if not self._request_rules:
            return
        now = self._clock()
        counters = self._counters(self._request_rules, user, now)
        results = await asyncio.gather(*(self._count(c) for c in counters))
        refused = [c for c, counts in zip(counters, results, strict=True) if counts is None]
        if not refused:
            return
        # Give back what the other rules counted: this request is not served. A failed
        # give-back costs the caller one request of that quota, never the 429.
        counted = [c for c, counts in zip(counters, results, strict=True) if counts is not None]
        await asyncio.gather(*(self._uncount(c) for c in counted), return_exceptions=True)
        raise await self._refusal(refused[0], now)

    async def check_tokens(self, user: Owner) -> None:
        """RateLimitError (429) when a token budget of ``user`` is used up in the current
        window. Reads only; `check_request` already makes this check."""
        now = self._clock()
        counters = self._counters(self._token_rules, user, now)
        records = await asyncio.gather(*(self.store.get(c.key) for c in counters))
        for counter, record in zip(counters, records, strict=True):
            if record is not None and self._tokens_spent(counter.rule, record.value):
                raise self._tokens_error(counter, now)

    async def add_tokens(self, user: Owner, n: int) -> None:
        """Charge ``n`` tokens (a response's usage) to every token budget of ``user``."""
        if n <= 0 or not self._token_rules:
            return
        counters = self._counters(self._token_rules, user, self._clock())
        await asyncio.gather(
            *(
                self.store.incr(
                    c.key, {"tokens": n}, ttl=c.rule.window_s, owner=c.owner
                )
                for c in counters
            )
        )

    # --- internals ---------------------------------------------------------------------

    def _counters(
        self, rules: tuple[QuotaRule, ...], user: Owner, now: float
    ) -> list[_Counter]:
        out = []
        for rule in rules:
            start = math.floor(now / rule.window_s) * rule.window_s
            for subject in rule.subjects(user):
                out.append(
                    _Counter(
                        rule=rule,
                        subject=subject,
                        key=_key(rule, subject, start),
                        window_end=start + rule.window_s,
                        # A principal's counter is its own record; a team's is shared.
                        owner=user if rule.attribute is None else None,
                    )
                )
        return out

    async def _count(self, counter: _Counter) -> dict[str, int] | None:
        rule = counter.rule
        limits: dict[str, int] = {}
        if rule.requests is not None:
            limits["requests"] = rule.requests
        if rule.tokens is not None:
            # Spent means tokens >= budget: refuse while tokens + 0 > budget - 1.
            limits["tokens"] = rule.tokens - 1
        return await self.store.incr(
            counter.key, {"requests": 1}, limits=limits, ttl=rule.window_s, owner=counter.owner
        )

    async def _uncount(self, counter: _Counter) -> None:
        await self.store.incr(
            counter.key, {"requests": -1}, ttl=counter.rule.window_s, owner=counter.owner
        )

    async def _refusal(self, counter: _Counter, now: float) -> RateLimitError:
        record = await self.store.get(counter.key)
        if record is not None and self._tokens_spent(counter.rule, record.value):
            return self._tokens_error(counter, now)
        retry = counter.retry_after(now)
        return RateLimitError(
            f"request quota exceeded: {counter.rule.requests} requests for "
            f"{counter.rule.describe(counter.subject)}; retry in {retry} s",
            headers={"retry-after": str(retry)},
        )

    @staticmethod
    def _tokens_spent(rule: QuotaRule, value: dict[str, object]) -> bool:
        tokens = value.get("tokens", 0)
        return rule.tokens is not None and isinstance(tokens, int) and tokens >= rule.tokens

    @staticmethod
    def _tokens_error(counter: _Counter, now: float) -> RateLimitError:
        retry = counter.retry_after(now)
        return RateLimitError(
            f"token quota exceeded: {counter.rule.tokens} tokens for "
            f"{counter.rule.describe(counter.subject)}; retry in {retry} s",
            headers={"retry-after": str(retry)},
        )


def _key(rule: QuotaRule, subject: str, window_start: int) -> str:
    match = "*" if rule.match is None else rule.match
    key = f"{PREFIX}{rule.scope}/{match}/{rule.window_s}/{subject}/{window_start}"
    try:
        if len(key.encode()) <= 400:
            return key
    except UnicodeEncodeError:  # a lone surrogate: no store takes it as is
        pass
    # Within the kv key limit (512 bytes) whatever principals and values look like.
    digest = hashlib.sha256(key.encode(errors="surrogatepass")).hexdigest()
    return f"{PREFIX}{rule.window_s}/h/{digest}/{window_start}"
