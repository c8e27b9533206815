"""Quotas on real stores: SQLite in a temp file and DynamoDB on a moto server, with an
injected clock for the windows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fnstack.config import parse_config
from fnstack.errors import ConfigError, RateLimitError
from fnstack.quotas import QuotaConfig, Quotas
from fnstack.storage import (
    KVDynamoDBConfig,
    KVSqliteConfig,
    KVStore,
    Owner,
    StorageConfig,
    StoreRef,
    Stores,
    open_kv,
)
from tests.support.aws import FAKE_ENV, REGION, MotoServer, create_table

TABLE = "fnstack-quotas-test"
ALICE = Owner("alice", {"teams": ["red"]})
TOM = Owner("tom", {"teams": ["red", "blue"]})
BOB = Owner("bob", {"teams": ["blue"]})
LONER = Owner("lone")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_ENV.items():
            mp.setenv(name, value)
        with MotoServer() as server:
            create_table(server.endpoint, TABLE)
            yield server


@pytest.fixture(params=["kv_sqlite", "kv_dynamodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KVStore]:
    namespace = f"registry-{uuid.uuid4().hex[:12]}"
    if request.param == "kv_sqlite":
        kv = open_kv(KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db")), namespace)
    else:
        endpoint = request.getfixturevalue("moto").endpoint
        kv = open_kv(
            KVDynamoDBConfig(
                type="kv_dynamodb", table=TABLE, region=REGION, endpoint_url=endpoint
            ),
            namespace,
        )
    yield kv
    await kv.close()


def quotas(store: KVStore, clock: Clock, *rules: dict[str, Any]) -> Quotas:
    return Quotas(QuotaConfig.model_validate({"rules": list(rules)}), store, clock=clock)


async def refused(call: Any) -> RateLimitError:
    with pytest.raises(RateLimitError) as err:
        await call
    return err.value


# --- requests --------------------------------------------------------------------------------


async def test_requests_then_429_with_retry_after(store: KVStore) -> None:
    clock = Clock(1000.5)  # window [960, 1020)
    q = quotas(store, clock, {"scope": "principal", "requests": 3, "window_s": 60})
    for _ in range(3):
        await q.check_request(ALICE)
    err = await refused(q.check_request(ALICE))
    assert (err.status, err.type, err.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert err.headers == {"retry-after": "20"}
    assert "request quota exceeded: 3 requests for principal 'alice' per 60 s" in err.message
    assert "retry in 20 s" in err.message
    assert err.to_dict()["error"]["code"] == "rate_limit_exceeded"
    # Others have their own counters.
    await q.check_request(BOB)
    # Refused requests are not counted: after the window the full quota is back.
    clock.now = 1019.9
    assert (await refused(q.check_request(ALICE))).headers == {"retry-after": "1"}
    clock.now = 1020.0
    for _ in range(3):
        await q.check_request(ALICE)
    await refused(q.check_request(ALICE))


async def test_no_rules_no_limits(store: KVStore) -> None:
    q = quotas(store, Clock(0))
    assert not q.enabled
    for _ in range(5):
        await q.check_request(ALICE)
    await q.check_tokens(ALICE)
    await q.add_tokens(ALICE, 10**9)
    assert (await store.list()).records == []


async def test_attribute_scope_shares_a_budget_per_value(store: KVStore) -> None:
    q = quotas(store, Clock(50.0), {"scope": "attribute:teams", "requests": 2, "window_s": 100})
    await q.check_request(ALICE)  # red 1
    await q.check_request(TOM)  # red 2, blue 1
    err = await refused(q.check_request(ALICE))
    assert "teams 'red'" in err.message and err.headers == {"retry-after": "50"}
    # tom is in red too: refused, and its blue count is given back, not kept.
    await refused(q.check_request(TOM))
    await q.check_request(BOB)  # blue 2
    await refused(q.check_request(BOB))
    for _ in range(5):  # no teams: the rule does not apply
        await q.check_request(LONER)


async def test_match_narrows_a_rule(store: KVStore) -> None:
    clock = Clock(10.0)
    q = quotas(
        store,
        clock,
        {"scope": "attribute:teams", "match": "blue", "requests": 1, "window_s": 10},
        {"scope": "principal", "match": "alice", "requests": 2, "window_s": 10},
    )
    await q.check_request(BOB)
    await refused(q.check_request(BOB))
    await refused(q.check_request(TOM))  # also blue
    await q.check_request(ALICE)
    await q.check_request(ALICE)
    await refused(q.check_request(ALICE))
    for _ in range(3):
        await q.check_request(LONER)


async def test_a_refused_request_is_given_back_to_the_other_rules(store: KVStore) -> None:
    q = quotas(
        store,
        Clock(5.0),
        {"scope": "principal", "requests": 10, "window_s": 60},
        {"scope": "attribute:teams", "requests": 1, "window_s": 60},
    )
    await q.check_request(ALICE)
    for _ in range(3):
        await refused(q.check_request(ALICE))
    counts = {r.key: r.value for r in (await store.list("quota/")).records}
    assert sorted(counts.values(), key=str) == [{"requests": 1}, {"requests": 1}]


async def test_concurrent_requests_admit_exactly_the_quota(store: KVStore) -> None:
    q = quotas(store, Clock(0.5), {"scope": "principal", "requests": 5, "window_s": 30})
    results = await asyncio.gather(
        *(q.check_request(ALICE) for _ in range(20)), return_exceptions=True
    )
    assert results.count(None) == 5
    assert all(isinstance(r, RateLimitError) for r in results if r is not None)


# --- tokens ----------------------------------------------------------------------------------


async def test_token_budget(store: KVStore) -> None:
    clock = Clock(3600.0)  # window [3600, 7200)
    q = quotas(
        store,
        clock,
        {"scope": "principal", "tokens": 100, "window_s": 3600, "description": "trial tier"},
    )
    await q.check_request(ALICE)
    await q.add_tokens(ALICE, 60)
    await q.check_tokens(ALICE)
    await q.check_request(ALICE)  # 60 < 100: still allowed
    await q.add_tokens(ALICE, 50)  # charged after the response: may overshoot
    clock.now = 3700.0
    err = await refused(q.check_tokens(ALICE))
    assert "token quota exceeded: 100 tokens for principal 'alice' per 3600 s" in err.message
    assert "(trial tier)" in err.message
    assert err.headers == {"retry-after": "3500"}
    err = await refused(q.check_request(ALICE))  # check_request checks the budget too
    assert err.message.startswith("token quota exceeded")
    await q.check_tokens(BOB)
    await q.add_tokens(ALICE, 0)
    await q.add_tokens(ALICE, -5)  # nothing to charge
    record = (await store.list("quota/")).records[0]
    assert record.value == {"requests": 2, "tokens": 110}
    clock.now = 7200.0  # the next window
    await q.check_tokens(ALICE)
    await q.check_request(ALICE)


async def test_a_budget_used_up_exactly_is_spent(store: KVStore) -> None:
    q = quotas(store, Clock(0), {"scope": "principal", "tokens": 100, "window_s": 60})
    await q.check_request(ALICE)
    await q.add_tokens(ALICE, 99)
    await q.check_request(ALICE)
    await q.check_tokens(ALICE)
    await q.add_tokens(ALICE, 1)
    assert (await refused(q.check_request(ALICE))).message.startswith("token quota exceeded")
    await refused(q.check_tokens(ALICE))


async def test_requests_and_tokens_in_one_rule(store: KVStore) -> None:
    q = quotas(
        store, Clock(0), {"scope": "principal", "requests": 2, "tokens": 10, "window_s": 60}
    )
    await q.check_request(ALICE)
    await q.add_tokens(ALICE, 9)
    await q.check_request(ALICE)
    err = await refused(q.check_request(ALICE))
    assert err.message.startswith("request quota exceeded")
    await q.add_tokens(ALICE, 1)
    err = await refused(q.check_request(ALICE))
    assert err.message.startswith("token quota exceeded")


async def test_window_rollover_with_a_real_clock(store: KVStore) -> None:
    window = 2
    q = Quotas(
        QuotaConfig.model_validate(
            {"rules": [{"scope": "principal", "requests": 1, "window_s": window}]}
        ),
        store,
    )
    # Windows are aligned to the epoch: start just after a boundary, so both requests
    # fall in one window however slow the store is (a loaded CI machine once took the
    # second request of a 1 s window into the next one).
    await asyncio.sleep(window - time.time() % window + 0.05)
    await q.check_request(ALICE)
    err = await refused(q.check_request(ALICE))
    await asyncio.sleep(float(err.headers["retry-after"]))
    await q.check_request(ALICE)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "path", "needle"),
    [
        ([{"scope": "team", "requests": 1, "window_s": 1}], "quotas.rules[0].scope",
         "unknown quota scope 'team'"),
        ([{"scope": "attribute:", "requests": 1, "window_s": 1}], "quotas.rules[0].scope",
         "attribute:<name>"),
        ([{"scope": "principal", "window_s": 1}], "quotas.rules[0]", "`requests`, `tokens`"),
        ([{"scope": "principal", "requests": 0, "window_s": 1}], "quotas.rules[0].requests",
         "greater than or equal to 1"),
        ([{"scope": "principal", "requests": 1}], "quotas.rules[0].window_s", "required"),
        ([{"scope": "principal", "requests": 1, "window_s": 5},
          {"scope": "principal", "tokens": 1, "window_s": 5}], "quotas.rules", "repeats"),
    ],
)
def test_bad_quota_config(rules: list[dict[str, Any]], path: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"quotas": {"rules": rules}})
    assert err.value.path == path
    assert needle in err.value.detail


def test_quota_config_default_is_empty() -> None:
    assert parse_config({}).quotas.rules == []


async def test_open_picks_the_quotas_store_else_registry(tmp_path: Path) -> None:
    backends = {"kv": KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db"))}
    only_registry = Stores(
        StorageConfig(
            backends=backends,  # type: ignore[arg-type]
            stores={"registry": StoreRef(backend="kv", namespace="registry")},
        )
    )
    both = Stores(
        StorageConfig(
            backends=backends,  # type: ignore[arg-type]
            stores={
                "registry": StoreRef(backend="kv", namespace="registry"),
                "quotas": StoreRef(backend="kv", namespace="quotas"),
            },
        )
    )
    try:
        assert Quotas.open(QuotaConfig(), only_registry).store.namespace == "registry"
        assert Quotas.open(QuotaConfig(), both).store.namespace == "quotas"
        assert Quotas.open(QuotaConfig(), both, store="registry").store.namespace == "registry"
    finally:
        await only_registry.close()
        await both.close()


async def test_long_subjects_still_make_valid_keys(store: KVStore) -> None:
    q = quotas(store, Clock(0), {"scope": "principal", "requests": 1, "window_s": 60})
    long_one = Owner("p" * 600)
    await q.check_request(long_one)
    await refused(q.check_request(long_one))
