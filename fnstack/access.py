"""Access policies: attribute-based permit/forbid rules, with Llama Stack's semantics.

A policy is an ordered list of rules; the first rule that matches decides::

    - permit:                         # or forbid:
        principal: alice              # optional: only this principal
        actions: [read, update]       # create | read | update | delete
        resource: chat_completion::*  # optional: TYPE::ID, "*" matches any run of characters
      when: user in owners teams      # optional: every condition must hold
      unless: user with admin in roles  # optional: the rule is void when every one holds
      description: teammates may read and update each other's completions

A rule matches a request when its scope matches (principal, action, resource), its
``when`` conditions all hold and its ``unless`` conditions do not all hold. ``permit``
allows, ``forbid`` denies; no matching rule denies.

Conditions (``<attr>`` is any attribute name: roles, teams, projects, ...)::

    user is owner                   the resource's owner is this principal
    user is not owner               it is not (or the resource has no owner)
    user in owners <attr>           the user shares a value of <attr> with the owner
    user not in owners <attr>       it shares none (or the owner has none)
    user with <value> in <attr>     the user's <attr> holds <value>
    user with <value> not in <attr> it does not
    resource is unowned             the resource has no owner (e.g. from the run config)

Anything else is a configuration error at start, naming the text. `DEFAULT_POLICY` is
what applies with no ``access_policy`` in the run config; docs/access.md explains it.

`AccessPolicy.allows` runs on every request, so rules are compiled once: conditions into
small closures, resource patterns into an exact match, a prefix test or a regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from fnstack.storage.base import Owner

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_AUTH_OFF",
    "AccessPolicy",
    "AccessRule",
    "Action",
    "Resource",
    "Scope",
    "policy_for",
]

Action = Literal["create", "read", "update", "delete"]
ACTIONS: tuple[Action, ...] = get_args(Action)
ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is on: a type ("model", "chat_completion", "key"), the public id,
    and the owner (None: unowned, e.g. a model from the run config)."""

    type: str
    identifier: str
    owner: Owner | None = None


# --- conditions ------------------------------------------------------------------------

# (resource, user) -> bool
Check = Callable[[Resource, Owner], bool]


def _is_owner(resource: Resource, user: Owner) -> bool:
    return resource.owner is not None and resource.owner.principal == user.principal


def _values(who: Owner, name: str) -> Collection[str]:
    # Attributes are lists; a bare string (a hand-mapped claim) is one value, never a
    # sequence of characters for `in` to search.
    values = who.attributes.get(name, ())
    return (values,) if isinstance(values, str) else values


def _shares(name: str) -> Check:
    def check(resource: Resource, user: Owner) -> bool:
        # An owner without the attribute shares nothing (Llama Stack's current reading;
        # older versions let it match everyone, which leaked unlabelled records).
        if resource.owner is None:
            return False
        theirs = _values(resource.owner, name)
        return bool(theirs) and not set(theirs).isdisjoint(_values(user, name))

    return check


def _has(name: str, value: str) -> Check:
    def check(resource: Resource, user: Owner) -> bool:
        return value in _values(user, name)

    return check


def _negate(check: Check) -> Check:
    return lambda resource, user: not check(resource, user)


_NOWHERE = Resource("", "")  # for conditions on the user alone

CONDITION_FORMS = (
    "user is owner",
    "user is not owner",
    "user in owners <attr>",
    "user not in owners <attr>",
    "user with <value> in <attr>",
    "user with <value> not in <attr>",
    "resource is unowned",
)


@dataclass(frozen=True, slots=True)
class _Condition:
    """A parsed condition: its check, and what it says about a resource the user does
    not own when nothing else is known (True/False, or None: depends on the resource).
    `reads_only_own` reasons with the latter."""

    text: str
    check: Check
    on_foreign: Callable[[Owner], bool | None]


def parse_condition(text: str) -> _Condition:
    """One condition; ValueError naming ``text`` when it is none of `CONDITION_FORMS`."""
    words = text.split()
    match words:
        case ["user", "is", "owner"]:
            return _Condition(text, _is_owner, lambda user: False)
        case ["user", "is", "not", "owner"]:
            return _Condition(text, _negate(_is_owner), lambda user: True)
        case ["user", "in", "owners", name]:
            return _Condition(text, _shares(name), lambda user: None)
        case ["user", "not", "in", "owners", name]:
            return _Condition(text, _negate(_shares(name)), lambda user: None)
        case ["user", "with", value, "in", name]:
            has = _has(name, value)
            # Depends on the user alone: known for any resource.
            return _Condition(text, has, lambda user: has(_NOWHERE, user))
        case ["user", "with", value, "not", "in", name]:
            has_not = _negate(_has(name, value))
            return _Condition(text, has_not, lambda user: has_not(_NOWHERE, user))
        case ["resource", "is", "unowned"]:
            return _Condition(text, lambda r, u: r.owner is None, lambda user: None)
    raise ValueError(
        f"unknown condition {text!r}; a condition is one of: " + "; ".join(CONDITION_FORMS)
    )


def _conditions(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- rules -----------------------------------------------------------------------------


class Scope(BaseModel):
    """Whom, what and on what a rule speaks about; an absent field matches everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str | None = None
    actions: list[Action]
    resource: str | None = None

    @field_validator("actions", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("actions")
    @classmethod
    def _some(cls, value: list[Action]) -> list[Action]:
        if not value:
            raise ValueError("actions must name at least one of: " + ", ".join(ACTIONS))
        return value

    @field_validator("resource")
    @classmethod
    def _typed(cls, value: str | None) -> str | None:
        if value is not None:
            kind, sep, ident = value.partition("::")
            if not sep or not kind or not ident:
                raise ValueError(
                    f"resource {value!r} must be TYPE::ID, e.g. model::* or model::llama-3"
                )
        return value


class AccessRule(BaseModel):
    """One rule of a policy: exactly one of ``permit``/``forbid``, optional conditions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    permit: Scope | None = None
    forbid: Scope | None = None
    when: str | list[str] | None = None
    unless: str | list[str] | None = None
    description: str | None = None

    @field_validator("when", "unless")
    @classmethod
    def _parsable(cls, value: str | list[str] | None) -> str | list[str] | None:
        for text in _conditions(value):
            parse_condition(text)  # raises, naming the text
        return value

    @model_validator(mode="after")
    def _one_scope(self) -> AccessRule:
        if (self.permit is None) == (self.forbid is None):
            raise ValueError("a rule needs exactly one of `permit` or `forbid`")
        return self

    @property
    def scope(self) -> Scope:
        scope = self.permit or self.forbid
        assert scope is not None  # the validator saw to it
        return scope


def _compile_pattern(text: str) -> Callable[[str], bool]:
    """``text`` with "*" wildcards as the cheapest test that does the job."""
    if "*" not in text:
        return text.__eq__
    if text == "*":
        return lambda s: True
    if text.count("*") == 1 and text.endswith("*"):
        head = text[:-1]
        return lambda s: s.startswith(head)
    regex = re.compile(".*".join(map(re.escape, text.split("*"))), re.DOTALL)
    return lambda s: regex.fullmatch(s) is not None


@dataclass(frozen=True, slots=True)
class _Compiled:
    permit: bool
    principal: str | None
    actions: frozenset[str]
    kind: Callable[[str], bool] | None  # None: any type
    ident: Callable[[str], bool] | None  # None: any identifier
    when: tuple[_Condition, ...]
    unless: tuple[_Condition, ...]

    @classmethod
    def of(cls, rule: AccessRule) -> _Compiled:
        scope = rule.scope
        kind = ident = None
        if scope.resource is not None:
            kind_text, _, ident_text = scope.resource.partition("::")
            kind = None if kind_text == "*" else _compile_pattern(kind_text)
            ident = None if ident_text == "*" else _compile_pattern(ident_text)
        return cls(
            permit=rule.permit is not None,
            principal=scope.principal,
            actions=frozenset(scope.actions),
            kind=kind,
            ident=ident,
            when=tuple(map(parse_condition, _conditions(rule.when))),
            unless=tuple(map(parse_condition, _conditions(rule.unless))),
        )

    def matches(self, action: str, resource: Resource, user: Owner) -> bool:
        if action not in self.actions:
            return False
        if self.principal is not None and self.principal != user.principal:
            return False
        if self.kind is not None and not self.kind(resource.type):
            return False
        if self.ident is not None and not self.ident(resource.identifier):
            return False
        if self.when and not all(c.check(resource, user) for c in self.when):
            return False
        return not (self.unless and all(c.check(resource, user) for c in self.unless))

    def on_foreign(self, resource_type: str, user: Owner) -> bool | None:
        """Does this rule match a ``read`` of a ``resource_type`` record the user does
        not own? True: every such record; False: none; None: some, or cannot tell."""
        if "read" not in self.actions:
            return False
        if self.principal is not None and self.principal != user.principal:
            return False
        if self.kind is not None and not self.kind(resource_type):
            return False
        verdict: bool | None = True if self.ident is None else None
        for c in self.when:
            holds = c.on_foreign(user)
            if holds is False:
                return False
            if holds is None:
                verdict = None
        if self.unless:
            holds_all: bool | None = True
            for c in self.unless:
                holds = c.on_foreign(user)
                if holds is False:
                    holds_all = False
                    break
                if holds is None:
                    holds_all = None
            if holds_all is True:
                return False
            if holds_all is None:
                verdict = None
        return verdict


class AccessPolicy:
    """Compiled rules; `allows` decides, first match wins, no match denies."""

    def __init__(self, rules: Sequence[AccessRule], *, name: str = "access_policy") -> None:
        self.rules = tuple(rules)
        self.name = name
        self._compiled = tuple(map(_Compiled.of, self.rules))

    def allows(self, action: Action, resource: Resource, user: Owner) -> bool:
        """May ``user`` do ``action`` on ``resource``?"""
        for rule in self._compiled:
            if rule.matches(action, resource, user):
                return rule.permit
        return False

    def reads_only_own(self, resource_type: str, user: Owner) -> bool:
        """True when ``user`` may read no ``resource_type`` record it does not own, so a
        listing may ask the store for the user's records alone. False when unsure."""
        for rule in self._compiled:
            verdict = rule.on_foreign(resource_type, user)
            if rule.permit and verdict is not False:
                return False  # it may let the user read someone else's record
            if not rule.permit and verdict is True:
                return True  # every foreign record is forbidden before any permit
        return True  # no rule permits a foreign read: denied by default

    def with_rules_first(self, rules: Sequence[AccessRule], name: str) -> AccessPolicy:
        return AccessPolicy([*rules, *self.rules], name=name)

    def __repr__(self) -> str:
        return f"AccessPolicy({self.name}, {len(self.rules)} rules)"


# --- the default -----------------------------------------------------------------------

_WRITE: list[Action] = ["create", "update", "delete"]

DEFAULT_RULES: tuple[AccessRule, ...] = (
    AccessRule(
        permit=Scope(actions=list(ACTIONS)),
        when=f"user with {ADMIN_ROLE} in roles",
        description="admins may do anything",
    ),
    AccessRule(
        forbid=Scope(actions=_WRITE, resource="model::*"),
        description="only admins register, change or delete models",
    ),
    AccessRule(
        forbid=Scope(actions=_WRITE, resource="shield::*"),
        description="only admins register or delete shields",
    ),
    AccessRule(
        forbid=Scope(actions=_WRITE, resource="key::*"),
        description="only admins create, change or revoke API keys",
    ),
    AccessRule(
        permit=Scope(actions=["read"], resource="model::*"),
        description="every principal may use (read) the registered models",
    ),
    AccessRule(
        permit=Scope(actions=["read"], resource="shield::*"),
        description="every principal may use (read) the registered shields",
    ),
    AccessRule(
        permit=Scope(actions=list(ACTIONS)),
        when="user is owner",
        description="a principal may do anything to its own records",
    ),
)

DEFAULT_POLICY = AccessPolicy(DEFAULT_RULES, name="default")

# With authentication off every caller is the anonymous Owner(); under the default policy
# it keeps what it always had: everything, as an admin would.
_AUTH_OFF_RULE = AccessRule(
    permit=Scope(principal=Owner().principal, actions=list(ACTIONS)),
    description="authentication is off: the anonymous caller may do anything",
)
DEFAULT_POLICY_AUTH_OFF = DEFAULT_POLICY.with_rules_first([_AUTH_OFF_RULE], "default, auth off")


def policy_for(rules: Sequence[AccessRule] | None, *, auth_enabled: bool) -> AccessPolicy:
    """The policy to enforce: the configured ``access_policy`` rules when there are some
    (as written, whether or not authentication is on), else the default; with
    authentication off the default lets the anonymous caller do everything."""
    if rules:
        return AccessPolicy(rules)
    return DEFAULT_POLICY if auth_enabled else DEFAULT_POLICY_AUTH_OFF
