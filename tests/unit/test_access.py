"""Access policies: rule matching, conditions, the default policy and reads_only_own."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from fnstack.access import (
    ACTIONS,
    DEFAULT_POLICY,
    AccessPolicy,
    AccessRule,
    Action,
    Resource,
    policy_for,
)
from fnstack.config import parse_config
from fnstack.errors import ConfigError
from fnstack.storage import Owner

ALICE = Owner("alice", {"teams": ["red"], "projects": ["p1"], "roles": ["user"]})
TEAMMATE = Owner("tom", {"teams": ["red", "blue"], "roles": ["user"]})
ADMIN = Owner("root", {"roles": ["admin"]})
STRANGER = Owner("eve", {"teams": ["green"], "roles": ["user"]})
ANONYMOUS = Owner()

RULES = TypeAdapter(list[AccessRule])


def rules(*raw: dict[str, Any]) -> list[AccessRule]:
    return RULES.validate_python(list(raw))


def policy(*raw: dict[str, Any]) -> AccessPolicy:
    return AccessPolicy(rules(*raw))


def completion(owner: Owner | None = ALICE, ident: str = "chatcmpl-1") -> Resource:
    return Resource("chat_completion", ident, owner)


# --- the default policy --------------------------------------------------------------------

MODEL = Resource("model", "llama", ALICE)  # registered by API by alice
CONFIG_MODEL = Resource("model", "smol", None)  # from the run config: unowned
KEY = Resource("key", "key-1", ALICE)
RECORD = completion(ALICE)
UNOWNED_RECORD = completion(None)

# (user, resource) -> the actions the default policy allows
DEFAULT_TABLE: list[tuple[Owner, Resource, set[Action]]] = [
    (ALICE, RECORD, set(ACTIONS)),  # owner
    (TEAMMATE, RECORD, set()),  # shares a team, but records are private by default
    (STRANGER, RECORD, set()),
    (ADMIN, RECORD, set(ACTIONS)),
    (ALICE, UNOWNED_RECORD, set()),
    (ALICE, MODEL, {"read"}),  # even its own registration: only admins change models
    (STRANGER, MODEL, {"read"}),
    (STRANGER, CONFIG_MODEL, {"read"}),
    (ADMIN, MODEL, set(ACTIONS)),
    (ADMIN, CONFIG_MODEL, set(ACTIONS)),
    (ALICE, KEY, {"read"}),  # may see its own key's record, never create or revoke
    (STRANGER, KEY, set()),
    (ADMIN, KEY, set(ACTIONS)),
    (ANONYMOUS, RECORD, set()),  # auth on: anonymous is nobody special
    (ANONYMOUS, MODEL, {"read"}),
]


@pytest.mark.parametrize(("user", "resource", "allowed"), DEFAULT_TABLE)
def test_default_policy(user: Owner, resource: Resource, allowed: set[Action]) -> None:
    got = {a for a in ACTIONS if DEFAULT_POLICY.allows(a, resource, user)}
    assert got == allowed


def test_creating_an_own_record_is_allowed() -> None:
    # The record being created is owned by its creator.
    assert DEFAULT_POLICY.allows("create", completion(STRANGER), STRANGER)
    assert not DEFAULT_POLICY.allows("create", Resource("model", "m", STRANGER), STRANGER)


@pytest.mark.parametrize("resource", [RECORD, UNOWNED_RECORD, MODEL, CONFIG_MODEL, KEY])
def test_auth_off_anonymous_may_do_everything(resource: Resource) -> None:
    auth_off = policy_for(None, auth_enabled=False)
    assert all(auth_off.allows(a, resource, ANONYMOUS) for a in ACTIONS)
    # Only the anonymous caller is special: the rest of the default still applies.
    assert not auth_off.allows("delete", MODEL, STRANGER)


def test_policy_for() -> None:
    assert policy_for(None, auth_enabled=True) is DEFAULT_POLICY
    assert policy_for([], auth_enabled=True) is DEFAULT_POLICY
    configured = policy_for(rules({"permit": {"actions": ["read"]}}), auth_enabled=False)
    # A configured policy is enforced as written, also for the anonymous caller.
    assert configured.allows("read", RECORD, ANONYMOUS)
    assert not configured.allows("delete", ANONYMOUS_RECORD, ANONYMOUS)


ANONYMOUS_RECORD = completion(ANONYMOUS)


# --- rules and conditions ------------------------------------------------------------------

TEAM_POLICY = policy(
    {"forbid": {"actions": ["delete"]}, "unless": "user is owner",
     "description": "only the owner deletes"},
    {"permit": {"actions": ["read", "update", "delete"]}, "when": "user in owners teams"},
    {"permit": {"actions": ["create", "read"]}, "when": ["user is owner"]},
    {"permit": {"actions": ["read"], "resource": "chat_completion::public-*"}},
)


@pytest.mark.parametrize(
    ("user", "resource", "allowed"),
    [
        (ALICE, RECORD, {"create", "read", "update", "delete"}),
        (TEAMMATE, RECORD, {"read", "update"}),  # delete forbidden first: not the owner
        (STRANGER, RECORD, set()),
        (STRANGER, completion(ALICE, "public-1"), {"read"}),
        (STRANGER, completion(ALICE, "xpublic-1"), set()),
        # An owner without teams shares no team with anyone.
        (TEAMMATE, completion(Owner("x")), set()),
        (TEAMMATE, completion(None), set()),
    ],
)
def test_team_policy(user: Owner, resource: Resource, allowed: set[Action]) -> None:
    assert {a for a in ACTIONS if TEAM_POLICY.allows(a, resource, user)} == allowed


def test_first_match_wins() -> None:
    permit_then_forbid = policy(
        {"permit": {"actions": ["read"]}}, {"forbid": {"actions": ["read"]}}
    )
    forbid_then_permit = policy(
        {"forbid": {"actions": ["read"]}}, {"permit": {"actions": ["read"]}}
    )
    assert permit_then_forbid.allows("read", RECORD, STRANGER)
    assert not forbid_then_permit.allows("read", RECORD, STRANGER)


def test_no_match_denies() -> None:
    assert not AccessPolicy([]).allows("read", RECORD, ALICE)
    assert not policy({"permit": {"actions": ["read"]}}).allows("update", RECORD, ALICE)


def test_principal_and_resource_scope() -> None:
    p = policy(
        {"permit": {"principal": "eve", "actions": "read", "resource": "model::llama*"}},
        {"permit": {"actions": ["read"], "resource": "*::shared-*"}},
        {"permit": {"actions": ["update"], "resource": "chat_*::*-7"}},
    )
    assert p.allows("read", Resource("model", "llama-3", None), STRANGER)
    assert not p.allows("read", Resource("model", "llama-3", None), ALICE)
    assert not p.allows("read", Resource("model", "mistral", None), STRANGER)
    assert not p.allows("read", Resource("vector_store", "llama", None), STRANGER)
    assert p.allows("read", Resource("file", "shared-1", None), ALICE)
    assert p.allows("update", completion(None, "abc-7"), ALICE)
    assert not p.allows("update", completion(None, "abc-8"), ALICE)
    # "." and other regex characters are literal; "*" is the only wildcard.
    dotted = policy({"permit": {"actions": ["read"], "resource": "model::a.b*"}})
    assert dotted.allows("read", Resource("model", "a.b-1"), ALICE)
    assert not dotted.allows("read", Resource("model", "axb-1"), ALICE)


@pytest.mark.parametrize(
    ("condition", "user", "resource", "holds"),
    [
        ("user is owner", ALICE, RECORD, True),
        ("user is owner", STRANGER, RECORD, False),
        ("user is owner", ALICE, UNOWNED_RECORD, False),
        ("user is not owner", STRANGER, RECORD, True),
        ("user is not owner", ALICE, RECORD, False),
        ("user is not owner", ALICE, UNOWNED_RECORD, True),
        ("user in owners teams", TEAMMATE, RECORD, True),
        ("user in owners teams", STRANGER, RECORD, False),
        ("user in owners projects", TEAMMATE, RECORD, False),  # tom has no projects
        ("user not in owners teams", STRANGER, RECORD, True),
        ("user not in owners teams", TEAMMATE, RECORD, False),
        ("user with admin in roles", ADMIN, RECORD, True),
        ("user with admin in roles", ALICE, RECORD, False),
        ("user with admin in roles", ANONYMOUS, RECORD, False),
        ("user with admin not in roles", ALICE, RECORD, True),
        ("user with admin not in roles", ADMIN, RECORD, False),
        ("user with p1 in projects", ALICE, RECORD, True),
        ("resource is unowned", ALICE, UNOWNED_RECORD, True),
        ("resource is unowned", ALICE, RECORD, False),
    ],
)
def test_conditions(condition: str, user: Owner, resource: Resource, holds: bool) -> None:
    when = policy({"permit": {"actions": ["read"]}, "when": condition})
    unless = policy({"permit": {"actions": ["read"]}, "unless": condition})
    assert when.allows("read", resource, user) is holds
    assert unless.allows("read", resource, user) is not holds


def test_when_needs_all_and_unless_voids_only_when_all_hold() -> None:
    both = ["user in owners teams", "user with user in roles"]
    when = policy({"permit": {"actions": ["read"]}, "when": both})
    unless = policy({"permit": {"actions": ["read"]}, "unless": both})
    assert when.allows("read", RECORD, TEAMMATE)
    assert not when.allows("read", RECORD, Owner("x", {"teams": ["red"]}))  # no role
    assert not unless.allows("read", RECORD, TEAMMATE)
    assert unless.allows("read", RECORD, Owner("x", {"teams": ["red"]}))


def test_a_bare_string_attribute_is_one_value() -> None:
    odd = Owner("x", {"roles": "administrators"})  # type: ignore[dict-item]
    p = policy({"permit": {"actions": ["read"]}, "when": "user with admin in roles"})
    assert not p.allows("read", RECORD, odd)


def test_forbid_with_when() -> None:
    p = policy(
        {"forbid": {"actions": ["delete"]}, "when": "user with intern in roles"},
        {"permit": {"actions": ["delete"]}},
    )
    assert not p.allows("delete", RECORD, Owner("i", {"roles": ["intern"]}))
    assert p.allows("delete", RECORD, ALICE)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "path", "needle"),
    [
        ({"permit": {"actions": ["read"]}, "when": "user is admin"}, "when", "'user is admin'"),
        ({"permit": {"actions": ["read"]}, "unless": ["user is owner", "owner is user"]},
         "unless", "'owner is user'"),
        ({"permit": {"actions": ["read"]}, "when": "user with in roles"}, "when",
         "'user with in roles'"),
        ({"permit": {"actions": ["write"]}}, "permit.actions[0]", "'create', 'read'"),
        ({"permit": {"actions": []}}, "permit.actions", "at least one"),
        ({"permit": {"actions": ["read"], "resource": "model"}}, "permit.resource", "TYPE::ID"),
        ({"permit": {"actions": ["read"]}, "forbid": {"actions": ["read"]}}, "", "exactly one"),
        ({"when": "user is owner"}, "", "exactly one"),
        ({"permit": {"actions": ["read"], "who": "x"}}, "permit.who", "Extra inputs"),
    ],
)
def test_bad_rules_are_config_errors(rule: dict[str, Any], path: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"access_policy": [{"permit": {"actions": ["read"]}}, rule]})
    assert err.value.path == "access_policy[1]" + (f".{path}" if path else "")
    assert needle in err.value.detail


def test_config_yaml_shape() -> None:
    config = parse_config(
        {
            "access_policy": [
                {"permit": {"actions": ["read"], "resource": "model::*"},
                 "description": "models for all"},
                {"permit": {"actions": "read"}, "when": "user in owners teams"},
            ]
        }
    )
    assert config.access_policy is not None
    p = policy_for(config.access_policy, auth_enabled=True)
    assert p.allows("read", RECORD, TEAMMATE)
    assert not p.allows("update", RECORD, TEAMMATE)
    assert parse_config({}).access_policy is None


def test_pydantic_model_rejects_unknown_condition_directly() -> None:
    with pytest.raises(ValidationError, match="unknown condition 'user owns it'"):
        AccessRule.model_validate({"permit": {"actions": ["read"]}, "when": "user owns it"})


# --- reads_only_own --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "resource_type", "user", "expected"),
    [
        (DEFAULT_POLICY, "chat_completion", ALICE, True),
        (DEFAULT_POLICY, "key", ALICE, True),
        (DEFAULT_POLICY, "model", ALICE, False),  # every model is readable
        (DEFAULT_POLICY, "chat_completion", ADMIN, False),
        (policy_for(None, auth_enabled=False), "chat_completion", ANONYMOUS, False),
        (policy_for(None, auth_enabled=False), "chat_completion", ALICE, True),
        (TEAM_POLICY, "chat_completion", ALICE, False),  # teammates' records
        (AccessPolicy([]), "chat_completion", ALICE, True),
        # A forbid of every foreign read ahead of a broad permit.
        (policy({"forbid": {"actions": ["read"]}, "unless": "user is owner"},
                {"permit": {"actions": ["read"]}}), "file", ALICE, True),
        # ... but not one that forbids only some identifiers.
        (policy({"forbid": {"actions": ["read"], "resource": "file::a*"},
                 "unless": "user is owner"},
                {"permit": {"actions": ["read"]}}), "file", ALICE, False),
        # Permits that cannot apply: another principal, another type, another action,
        # a role the user lacks.
        (policy({"permit": {"principal": "eve", "actions": ["read"]}},
                {"permit": {"actions": ["read"], "resource": "model::*"}},
                {"permit": {"actions": ["update"]}},
                {"permit": {"actions": ["read"]}, "when": "user with admin in roles"},
                {"permit": {"actions": ["read"]}, "when": "user is owner"}),
         "file", ALICE, True),
        # A permit that depends on the resource: unsure, so False.
        (policy({"permit": {"actions": ["read"]}, "when": "resource is unowned"}),
         "file", ALICE, False),
        (policy({"permit": {"actions": ["read"], "resource": "file::x"}}), "file", ALICE, False),
        (policy({"permit": {"actions": ["read"]}, "unless": "user with admin not in roles"}),
         "file", ALICE, True),
    ],
)
def test_reads_only_own(
    p: AccessPolicy, resource_type: str, user: Owner, expected: bool
) -> None:
    assert p.reads_only_own(resource_type, user) is expected


def test_reads_only_own_agrees_with_allows() -> None:
    """Whenever reads_only_own says True, no foreign record of the type is readable."""
    users = [ALICE, TEAMMATE, ADMIN, STRANGER, ANONYMOUS]
    owners: list[Owner | None] = [None, ALICE, TEAMMATE, STRANGER, ANONYMOUS]
    policies = [DEFAULT_POLICY, policy_for(None, auth_enabled=False), TEAM_POLICY]
    for p in policies:
        for user in users:
            for kind in ("chat_completion", "model", "key"):
                if not p.reads_only_own(kind, user):
                    continue
                for owner in owners:
                    if owner is not None and owner.principal == user.principal:
                        continue
                    for ident in ("x", "public-1"):
                        assert not p.allows("read", Resource(kind, ident, owner), user)
