"""The kv contract, identical for every backend (see conftest: sqlite, DynamoDB on moto)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from fnstack.errors import ConflictError, InvalidRequestError, PreconditionFailedError
from fnstack.storage import KVRecord, KVStore, Owner
from fnstack.storage.base import Order
from fnstack.storage.kv_sqlite import SqliteDatabase, SqliteKVStore
from tests.storage.conftest import KVOpener

NESTED: dict[str, Any] = {
    "text": "héllo wörld ✓ 你好",
    "list": [1, 2.5, None, True, {"deep": ["x", {"deeper": []}]}],
    "empty": {},
}


async def _put_many(kv: KVStore, keys: list[str], **kwargs: Any) -> None:
    for key in keys:
        await kv.put(key, {"k": key}, **kwargs)


def _keys(records: list[KVRecord]) -> list[str]:
    return [r.key for r in records]


# --- get / put / delete ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["plain", "a/b:c d#e", "ключ/😀/ü", "x" * 512])
async def test_roundtrip(kv: KVStore, key: str) -> None:
    assert await kv.get(key) is None
    written = await kv.put(key, NESTED)
    assert (written.key, written.value, written.version) == (key, NESTED, 1)
    got = await kv.get(key)
    assert got is not None
    assert (got.key, got.value, got.version, got.expires_at) == (key, NESTED, 1, None)
    assert await kv.delete(key) is True
    assert await kv.get(key) is None
    assert await kv.delete(key) is False


@pytest.mark.parametrize("key", ["", "é" * 257, "bad\ud800surrogate"])
async def test_invalid_keys(kv: KVStore, key: str) -> None:
    with pytest.raises(InvalidRequestError):
        await kv.put(key, {})
    with pytest.raises(InvalidRequestError):
        await kv.get(key)


async def test_version_increments(kv: KVStore) -> None:
    versions = [(await kv.put("k", {"n": n})).version for n in range(3)]
    assert versions == [1, 2, 3]
    got = await kv.get("k")
    assert got is not None and got.version == 3 and got.value == {"n": 2}


async def test_owner_stored_and_returned(kv: KVStore) -> None:
    alice = Owner("alice", {"roles": ["admin"], "teams": ["a", "b"]})
    await kv.put("mine", {}, owner=alice)
    await kv.put("anyone", {})
    mine, anyone = await kv.get("mine"), await kv.get("anyone")
    assert mine is not None and mine.owner == alice
    assert anyone is not None and anyone.owner == Owner()


async def test_namespaces_are_isolated(open_kv: KVOpener, kv: KVStore) -> None:
    other = open_kv(kv.namespace + "-other")
    await kv.put("k", {"ns": 1})
    await other.put("k", {"ns": 2})
    await other.put("only-other", {})
    a, b = await kv.get("k"), await other.get("k")
    assert a is not None and a.value == {"ns": 1}
    assert b is not None and b.value == {"ns": 2}
    assert _keys((await kv.list()).records) == ["k"]


# --- conditional writes ------------------------------------------------------------------


async def test_put_if_absent(kv: KVStore) -> None:
    assert (await kv.put("k", {"n": 1}, if_absent=True)).version == 1
    with pytest.raises(PreconditionFailedError):
        await kv.put("k", {"n": 2}, if_absent=True)
    got = await kv.get("k")
    assert got is not None and got.value == {"n": 1}


async def test_put_if_absent_over_expired(kv: KVStore) -> None:
    await kv.put("k", {"old": True}, ttl=-1)
    rec = await kv.put("k", {"new": True}, if_absent=True)
    assert rec.version == 1
    got = await kv.get("k")
    assert got is not None and got.value == {"new": True} and got.expires_at is None


async def test_create_many(kv: KVStore) -> None:
    await kv.put("live", {"n": 0})
    await kv.put("expired", {"old": True}, ttl=-1)
    alice = Owner(principal="alice")
    created = await kv.create_many(
        [("a", {"n": 1}, None), ("live", {"n": 2}, None), ("expired", {"n": 3}, alice)]
    )
    assert created == [True, False, True]
    a, live, expired = [await kv.get(k) for k in ("a", "live", "expired")]
    assert a is not None and a.value == {"n": 1} and a.version == 1
    assert live is not None and live.value == {"n": 0}
    assert expired is not None and expired.value == {"n": 3} and expired.owner == alice
    assert await kv.create_many([]) == []


async def test_put_if_version(kv: KVStore) -> None:
    await kv.put("k", {"n": 1})
    assert (await kv.put("k", {"n": 2}, if_version=1)).version == 2
    with pytest.raises(PreconditionFailedError):
        await kv.put("k", {"n": 3}, if_version=1)
    with pytest.raises(PreconditionFailedError):
        await kv.put("absent", {}, if_version=1)
    got = await kv.get("k")
    assert got is not None and (got.version, got.value) == (2, {"n": 2})


async def test_put_if_version_on_expired(kv: KVStore) -> None:
    await kv.put("k", {}, ttl=-1)  # version 1, but expired: gone for every caller
    with pytest.raises(PreconditionFailedError):
        await kv.put("k", {}, if_version=1)


async def test_delete_if_version(kv: KVStore) -> None:
    await kv.put("k", {})
    await kv.put("k", {})
    with pytest.raises(PreconditionFailedError):
        await kv.delete("k", if_version=1)
    assert await kv.get("k") is not None
    assert await kv.delete("k", if_version=2) is True
    assert await kv.get("k") is None
    with pytest.raises(PreconditionFailedError):
        await kv.delete("k", if_version=2)
    await kv.put("e", {}, ttl=-1)
    with pytest.raises(PreconditionFailedError):
        await kv.delete("e", if_version=1)


# --- TTL ---------------------------------------------------------------------------------


async def test_expired_records_are_hidden_but_still_stored(kv: KVStore) -> None:
    await kv.put("gone", {}, ttl=-1)
    await kv.put("live", {})
    assert await kv.get("gone") is None
    assert _keys((await kv.list()).records) == ["live"]
    # The engine still holds it (moto, like DynamoDB's lazy sweeper, never deleted it):
    # the base's filtering alone hides it.
    assert await kv._get("gone") is not None
    assert await kv.delete("gone") is False  # no *live* record was removed


async def test_ttl_expires(kv: KVStore) -> None:
    rec = await kv.put("k", {}, ttl=0.5)
    assert rec.expires_at is not None
    got = await kv.get("k")
    assert got is not None and got.expires_at == pytest.approx(rec.expires_at)
    await asyncio.sleep(0.6)
    assert await kv.get("k") is None
    assert (await kv.list()).records == []


async def test_put_without_ttl_clears_expiry(kv: KVStore) -> None:
    await kv.put("k", {}, ttl=60)
    await kv.put("k", {})
    got = await kv.get("k")
    assert got is not None and got.expires_at is None


# --- listing -----------------------------------------------------------------------------


async def test_list_prefix(kv: KVStore) -> None:
    await _put_many(kv, ["a", "a/1", "a/2", "a0", "ab", "b/1", "a/2/x"])
    assert _keys((await kv.list("a/")).records) == ["a/1", "a/2", "a/2/x"]
    assert _keys((await kv.list("b")).records) == ["b/1"]
    assert _keys((await kv.list("zz")).records) == []
    assert len((await kv.list()).records) == 7


async def test_list_unicode_order_is_code_point_order(kv: KVStore) -> None:
    keys = ["z", "é", "😀", "ꙮ", "A", "\u00ff", "\uffff"]
    await _put_many(kv, keys)
    assert _keys((await kv.list()).records) == sorted(keys)


async def test_list_order_limit_has_more(kv: KVStore) -> None:
    keys = [f"k{i:02d}" for i in range(7)]
    await _put_many(kv, keys)
    page = await kv.list(limit=3)
    assert (_keys(page.records), page.has_more) == (keys[:3], True)
    page = await kv.list(limit=3, order="desc")
    assert (_keys(page.records), page.has_more) == (keys[::-1][:3], True)
    page = await kv.list(limit=7)
    assert (_keys(page.records), page.has_more) == (keys, False)
    assert (await kv.list(limit=1000)).has_more is False


async def _walk(kv: KVStore, **kwargs: Any) -> list[list[str]]:
    """Every page, first to last, following ``after`` cursors."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await kv.list(after=cursor, **kwargs)
        pages.append(_keys(page.records))
        cursor = page.last_cursor
        if not page.has_more:
            return pages


async def _walk_back(kv: KVStore, cursor: str | None, **kwargs: Any) -> list[list[str]]:
    """Every page before ``cursor``, nearest first, following ``before`` cursors."""
    pages: list[list[str]] = []
    while True:
        page = await kv.list(before=cursor, **kwargs)
        pages.append(_keys(page.records))
        cursor = page.first_cursor
        if not page.has_more:
            return pages


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_cursor_pagination_forward(kv: KVStore, order: Order) -> None:
    keys = [f"item/{i:03d}" for i in range(23)]
    await _put_many(kv, keys)
    await kv.put("other", {})
    pages = await _walk(kv, prefix="item/", limit=5, order=order)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    expected = keys if order == "asc" else keys[::-1]
    assert [k for p in pages for k in p] == expected


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_cursor_pagination_backward(kv: KVStore, order: Order) -> None:
    keys = [f"item/{i:03d}" for i in range(23)]
    await _put_many(kv, keys)
    await kv.put("other", {})
    end = (await kv.list("item/", order=order, limit=1000)).last_cursor
    pages = await _walk_back(kv, end, prefix="item/", limit=5, order=order)
    # Walking back from the last record: full pages down to the first records.
    assert [len(p) for p in pages] == [5, 5, 5, 5, 2]
    expected = keys if order == "asc" else keys[::-1]
    assert [k for p in reversed(pages) for k in p] == expected[:-1]


async def test_before_returns_the_page_just_before(kv: KVStore) -> None:
    keys = [f"k{i:02d}" for i in range(10)]
    await _put_many(kv, keys)
    first = await kv.list(limit=3)
    second = await kv.list(limit=3, after=first.last_cursor)
    back = await kv.list(limit=3, before=second.first_cursor)
    assert (_keys(back.records), back.has_more) == (keys[:3], False)
    third = await kv.list(limit=3, after=second.last_cursor)
    back = await kv.list(limit=3, before=third.first_cursor)
    assert (_keys(back.records), back.has_more) == (keys[3:6], True)
    between = await kv.list(after=first.last_cursor, before=third.first_cursor)
    assert _keys(between.records) == keys[3:6]


async def test_cursor_outside_prefix(kv: KVStore) -> None:
    await _put_many(kv, ["a", "b/1", "b/2", "c"])
    a, c = (await kv.list(limit=1)).first_cursor, (await kv.list(order="desc")).first_cursor
    assert _keys((await kv.list("b/", after=a)).records) == ["b/1", "b/2"]
    assert _keys((await kv.list("b/", after=c)).records) == []
    assert _keys((await kv.list("b/", after=c, order="desc")).records) == ["b/2", "b/1"]
    assert _keys((await kv.list("b/", after=a, order="desc")).records) == []


async def test_list_skips_expired_without_short_pages(kv: KVStore) -> None:
    live = [f"k{i:03d}" for i in range(0, 90, 9)]  # 10 live, islands in 80 expired
    await _put_many(kv, [f"k{i:03d}" for i in range(90) if f"k{i:03d}" not in live], ttl=-1)
    await _put_many(kv, live)
    orders: list[Order] = ["asc", "desc"]
    for order in orders:
        pages = await _walk(kv, limit=3, order=order)
        assert [len(p) for p in pages] == [3, 3, 3, 1]
        assert [k for p in pages for k in p] == (live if order == "asc" else live[::-1])


async def test_list_owner_filter(kv: KVStore) -> None:
    alice, bob = Owner("alice"), Owner("bob")
    for i in range(8):
        await kv.put(f"doc/{i}", {}, owner=alice if i % 2 else bob)
    await kv.put("other/1", {}, owner=alice)
    await kv.put("doc/x", {}, owner=alice, ttl=-1)
    pages = await _walk(kv, prefix="doc/", limit=3, owner="alice")
    assert [k for p in pages for k in p] == ["doc/1", "doc/3", "doc/5", "doc/7"]
    assert all(
        r.owner == alice for r in (await kv.list("doc/", owner="alice", order="desc")).records
    )
    assert len((await kv.list(owner="alice")).records) == 5
    assert (await kv.list(owner="carol")).records == []


async def test_list_owner_filter_sees_owner_changes(kv: KVStore) -> None:
    await kv.put("k", {}, owner=Owner("alice"))
    await kv.put("k", {}, owner=Owner("bob"))
    assert (await kv.list(owner="alice")).records == []
    assert _keys((await kv.list(owner="bob")).records) == ["k"]


@pytest.mark.parametrize("cursor", ["!!!", "%%", "a b", "=", "QQ=", "gA"])
async def test_invalid_cursor(kv: KVStore, cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await kv.list(after=cursor)
    assert err.value.param == "after"
    with pytest.raises(InvalidRequestError) as err:
        await kv.list(before=cursor)
    assert err.value.param == "before"


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_limit_out_of_range(kv: KVStore, limit: int) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await kv.list(limit=limit)
    assert err.value.param == "limit"


# --- counters ----------------------------------------------------------------------------


async def test_incr_sequential(kv: KVStore) -> None:
    alice = Owner("alice", {"teams": ["red"]})
    assert await kv.incr("c", {"requests": 1}, owner=alice) == {"requests": 1}
    assert await kv.incr("c", {"requests": 2, "tokens": 10}) == {"requests": 3, "tokens": 10}
    assert await kv.incr("c", {"tokens": -4}) == {"requests": 3, "tokens": 6}
    got = await kv.get("c")
    assert got is not None
    assert (got.value, got.version, got.owner) == ({"requests": 3, "tokens": 6}, 3, alice)
    assert _keys((await kv.list(owner="alice")).records) == ["c"]


async def test_incr_limits_refuse_without_partial_writes(kv: KVStore) -> None:
    limits = {"requests": 3, "tokens": 100}
    for n in (1, 2, 3):
        assert await kv.incr("c", {"requests": 1, "tokens": 30}, limits=limits) == {
            "requests": n, "tokens": 30 * n,
        }
    # requests would reach 4: refused as a whole, tokens untouched too.
    assert await kv.incr("c", {"requests": 1, "tokens": 1}, limits=limits) is None
    # tokens would reach 110 though requests stay within theirs: refused as a whole.
    assert await kv.incr("c", {"tokens": 20}, limits={"tokens": 100, "requests": 3}) is None
    got = await kv.get("c")
    assert got is not None and (got.value, got.version) == ({"requests": 3, "tokens": 90}, 3)
    # A field only in limits is checked with delta 0 (and then stored as 0).
    assert await kv.incr("d", {"requests": 1}, limits={"tokens": 5}) == {
        "requests": 1, "tokens": 0,
    }
    # A fresh record over its limit is refused and never created.
    assert await kv.incr("e", {"tokens": 6}, limits={"tokens": 5}) is None
    assert await kv.get("e") is None


async def test_incr_concurrent_increments_are_exact(open_kv: KVOpener, kv_namespace: str) -> None:
    stores = [open_kv(kv_namespace) for _ in range(4)]
    results = await asyncio.gather(
        *[stores[i % 4].incr("c", {"n": 1}, ttl=60) for i in range(20)]
    )
    assert sorted(r["n"] for r in results if r is not None) == list(range(1, 21))
    got = await stores[0].get("c")
    assert got is not None and got.value == {"n": 20} and got.version == 20


async def test_incr_concurrent_limit_admits_exactly_the_limit(kv: KVStore) -> None:
    results = await asyncio.gather(*[kv.incr("c", {"n": 1}, limits={"n": 7}) for _ in range(20)])
    assert sorted(r["n"] for r in results if r is not None) == list(range(1, 8))
    assert results.count(None) == 13
    got = await kv.get("c")
    assert got is not None and got.value == {"n": 7}


async def test_incr_expiry_restarts_the_count(kv: KVStore) -> None:
    assert await kv.incr("c", {"n": 5}, ttl=0.4, owner=Owner("alice")) == {"n": 5}
    first = await kv.get("c")
    assert first is not None and first.expires_at is not None
    # A live record keeps the expiry it was created with.
    assert await kv.incr("c", {"n": 1}, ttl=100) == {"n": 6}
    again = await kv.get("c")
    assert again is not None and again.expires_at == pytest.approx(first.expires_at)
    await asyncio.sleep(0.5)
    assert await kv.get("c") is None
    # Restarted at 0, with the new increment's owner, expiry and version 1; the limit
    # applies to the new count, not to the stale 6.
    assert await kv.incr("c", {"n": 2}, limits={"n": 3}, ttl=60, owner=Owner("bob")) == {"n": 2}
    got = await kv.get("c")
    assert got is not None and (got.value, got.version, got.owner) == ({"n": 2}, 1, Owner("bob"))
    assert got.expires_at is not None and got.expires_at > first.expires_at + 50
    # Expired and over the limit: refused, the expired record left as it was.
    await kv.incr("x", {"n": 1}, ttl=-1)
    assert await kv.incr("x", {"n": 4}, limits={"n": 3}) is None
    assert await kv.get("x") is None


async def test_incr_over_put_records(kv: KVStore) -> None:
    await kv.put("ints", {"n": 4, "m": 1})
    assert await kv.incr("ints", {"n": 1}) == {"n": 5, "m": 1}
    got = await kv.get("ints")
    assert got is not None and (got.value, got.version) == ({"n": 5, "m": 1}, 2)
    assert await kv.incr("ints", {"n": 1}, limits={"n": 5}) is None
    await kv.put("text", {"n": "four"})
    with pytest.raises(ConflictError) as err:
        await kv.incr("text", {"n": 1})
    assert err.value.code == "not_a_counter"
    await kv.put("old", {"n": "x"}, ttl=-1)  # expired: replaced, whatever it held
    assert await kv.incr("old", {"n": 1}) == {"n": 1}


async def test_incr_rejects_bad_fields(kv: KVStore) -> None:
    with pytest.raises(ValueError):
        await kv.incr("c", {"bad-name": 1})
    with pytest.raises(ValueError):
        await kv.incr("c", {"n": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        await kv.incr("c", {})
    with pytest.raises(InvalidRequestError):
        await kv.incr("", {"n": 1})


# --- concurrency -------------------------------------------------------------------------


async def _race(calls: list[Any]) -> tuple[list[Any], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


@pytest.mark.parametrize("writers", [2, 10])
async def test_race_put_if_absent(kv: KVStore, writers: int) -> None:
    wins, losses = await _race([kv.put("k", {"w": w}, if_absent=True) for w in range(writers)])
    assert len(wins) == 1
    assert len(losses) == writers - 1
    assert all(isinstance(e, PreconditionFailedError) for e in losses)
    got = await kv.get("k")
    assert got is not None and got.value == wins[0].value and got.version == 1


@pytest.mark.parametrize("writers", [2, 10])
async def test_race_put_if_version(kv: KVStore, writers: int) -> None:
    await kv.put("k", {"w": None})
    wins, losses = await _race([kv.put("k", {"w": w}, if_version=1) for w in range(writers)])
    assert len(wins) == 1
    assert all(isinstance(e, PreconditionFailedError) for e in losses)
    got = await kv.get("k")
    assert got is not None and got.version == 2 and got.value == wins[0].value


async def test_race_across_store_instances(open_kv: KVOpener, kv_namespace: str) -> None:
    stores = [open_kv(kv_namespace) for _ in range(4)]
    wins, losses = await _race(
        [s.put("k", {"s": i}, if_absent=True) for i, s in enumerate(stores)]
    )
    assert (len(wins), len(losses)) == (1, 3)
    wins, losses = await _race([s.put("k", {"s": i}, if_version=1) for i, s in enumerate(stores)])
    assert (len(wins), len(losses)) == (1, 3)
    assert all(isinstance(e, PreconditionFailedError) for e in losses)


# --- sqlite only: separate connections, as separate processes would have -----------------


def test_sqlite_race_across_connections(tmp_path: Path) -> None:
    """Threads, each with its own connection to one file, race on the same key."""
    path = tmp_path / "kv.db"
    stores = [SqliteKVStore(path, "ns") for _ in range(6)]
    for store in stores:  # an own connection each, as another process would open
        store._db.release()
        store._db = SqliteDatabase(path)
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def writer(store: SqliteKVStore, if_version: int | None) -> None:
        async def put() -> None:
            barrier.wait()
            if if_version is None:
                await store.put("k", {}, if_absent=True)
            else:
                await store.put("k", {}, if_version=if_version)

        try:
            asyncio.run(put())
            outcomes.append("won")
        except PreconditionFailedError:
            outcomes.append("lost")

    for if_version in (None, 1):
        outcomes.clear()
        threads = [threading.Thread(target=writer, args=(s, if_version)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    for store in stores:
        store._db._conn.close()


def test_sqlite_incr_across_connections(tmp_path: Path) -> None:
    """Threads with their own connections (as processes would have) count exactly."""
    path = tmp_path / "kv.db"
    stores = [SqliteKVStore(path, "ns") for _ in range(4)]
    for store in stores:
        store._db.release()
        store._db = SqliteDatabase(path)
    barrier = threading.Barrier(len(stores))
    admitted: list[int] = []

    def counter(store: SqliteKVStore) -> None:
        async def count() -> None:
            barrier.wait()
            for _ in range(10):
                got = await store.incr("c", {"n": 1}, limits={"n": 25})
                if got is not None:
                    admitted.append(got["n"])

        asyncio.run(count())

    threads = [threading.Thread(target=counter, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(admitted) == list(range(1, 26))
    for store in stores:
        store._db._conn.close()
