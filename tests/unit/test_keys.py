"""API keys: KeyStore on a real SQLite kv store, and `fnstack keys` through click."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fnstack.cli import main
from fnstack.errors import InvalidRequestError, NotFoundError
from fnstack.keys import KeyStore, hash_secret, parse_key
from fnstack.storage import KVSqliteConfig, KVStore, Owner, open_kv

KEY = re.compile(r"^fns-([0-9a-f]{18})-([A-Za-z0-9_-]{43})$")


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[KVStore]:
    store = open_kv(KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db")), "registry")
    yield store
    await store.close()


async def test_create_verify_and_what_is_stored(kv: KVStore, tmp_path: Path) -> None:
    keys = KeyStore(kv)
    info, key = await keys.create(
        "ci-bot", principal="alice", attributes={"teams": ["red"]}, roles=["admin"]
    )
    m = KEY.match(key)
    assert m, key
    key_id, secret = m.groups()
    assert info.id == key_id and info.name == "ci-bot" and info.principal == "alice"
    assert info.attributes == {"teams": ["red"], "roles": ["admin"]}
    assert info.roles == ["admin"] and not info.revoked
    assert info.redacted_value == f"fns-{key_id}-...{secret[-4:]}"
    assert secret not in info.model_dump_json()

    owner = await keys.verify(key)
    assert owner == Owner("alice", {"teams": ["red"], "roles": ["admin"]})

    # What the store holds: the hash, never the secret, and the owner is the principal.
    record = await kv.get(f"apikey:{key_id}")
    assert record is not None
    assert record.owner.principal == "alice"
    stored = record.value
    assert stored["hash"] == hash_secret(secret) != secret
    assert secret not in repr(stored) and secret not in stored["hash"]
    await kv.close()
    files = [tmp_path / n for n in ("kv.db", "kv.db-wal") if (tmp_path / n).exists()]
    raw = b"".join(p.read_bytes() for p in files)  # the database and its WAL
    assert secret.encode() not in raw and key.encode() not in raw
    assert hash_secret(secret).encode() in raw  # the file is the one written, read back
    with sqlite3.connect(tmp_path / "kv.db") as db:
        rows = [str(r) for r in db.execute("select * from kv")]
    assert rows and not any(secret in r for r in rows)


async def test_principal_defaults_to_name(kv: KVStore) -> None:
    keys = KeyStore(kv)
    info, key = await keys.create("bob")
    assert info.principal == "bob" and info.attributes == {}
    assert await keys.verify(key) == Owner("bob", {})


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
        lambda k: k.rsplit("-", 1)[0] + "-",  # empty secret
        lambda k: "fns-0123456789abcdef00-" + k.rsplit("-", 1)[1],  # unknown id
        lambda k: k.replace("fns-", "sk-"),  # not ours
        lambda k: "fns-NOTHEX-" + k.rsplit("-", 1)[1],  # malformed id
        lambda k: "fns-" + "a" * 600 + "-x",  # longer than any storage key
        lambda k: "",
    ],
)
async def test_wrong_keys_verify_to_none(kv: KVStore, mangle: object) -> None:
    keys = KeyStore(kv)
    _, key = await keys.create("k")
    assert callable(mangle)
    assert await keys.verify(mangle(key)) is None
    assert await keys.verify(key) is not None


async def test_revoke_list_get(kv: KVStore) -> None:
    keys = KeyStore(kv, cache_ttl_s=60)
    a, key_a = await keys.create("a", principal="alice")
    b, key_b = await keys.create("b", principal="bob")
    await asyncio.sleep(0.002)
    c, _ = await keys.create("c", principal="alice")
    assert [i.id for i in await keys.list()] == [a.id, b.id, c.id]  # creation order
    assert [i.id for i in await keys.list(principal="alice")] == [a.id, c.id]

    assert await keys.verify(key_a) is not None  # now cached for 60 s
    revoked = await keys.revoke(a.id)
    assert revoked.revoked and revoked.revoked_at is not None
    # Revoked through this instance: refused at once, cache or not.
    assert await keys.verify(key_a) is None
    assert (await keys.get(a.id)).revoked
    again = await keys.revoke(a.id)  # idempotent: the first revocation time stays
    assert again.revoked_at == revoked.revoked_at
    assert await keys.verify(key_b) is not None

    with pytest.raises(NotFoundError):
        await keys.revoke("0123456789abcdef00")
    with pytest.raises(NotFoundError):
        await keys.get("../etc")


async def test_revocation_elsewhere_propagates_within_cache_ttl(
    kv: KVStore, tmp_path: Path
) -> None:
    mine = KeyStore(kv, cache_ttl_s=0.3)
    # Another process (the admin function, the CLI): its own store object on the same data.
    elsewhere = open_kv(
        KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db")), "registry"
    )
    other = KeyStore(elsewhere)
    info, key = await mine.create("k")
    assert await mine.verify(key) is not None
    await other.revoke(info.id)
    assert await mine.verify(key) is not None  # still trusted from the cache
    await asyncio.sleep(0.35)
    assert await mine.verify(key) is None
    # A wrong secret is refused even while the right one is cached.
    _, key2 = await mine.create("k2")
    assert await mine.verify(key2) is not None
    assert await mine.verify(key2[:-2] + "zz") is None
    await elsewhere.close()


async def test_revocation_through_another_keystore_on_the_same_store(kv: KVStore) -> None:
    auth = KeyStore(kv, cache_ttl_s=60)  # the authenticator's
    service = KeyStore(kv)  # the /v1/keys service's, over the same store object
    info, key = await service.create("k")
    assert await auth.verify(key) is not None  # cached for 60 s
    await service.revoke(info.id)
    assert await auth.verify(key) is None  # seen at once in this process


async def test_bad_names(kv: KVStore) -> None:
    keys = KeyStore(kv)
    with pytest.raises(InvalidRequestError):
        await keys.create("  ")
    with pytest.raises(InvalidRequestError):
        await keys.create("x", principal="")
    with pytest.raises(InvalidRequestError):
        await keys.create("x", attributes={"teams": "red"})  # type: ignore[dict-item]


def test_parse_key() -> None:
    assert parse_key("fns-0123456789abcdef00-s3cr-et_") == ("0123456789abcdef00", "s3cr-et_")
    assert parse_key("fns-0123456789abcdef00") is None
    assert parse_key("Bearer fns-0123456789abcdef00-x") is None


# --- the CLI ----------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(main, list(args), env={"FNSTACK_HOME": str(tmp_path)})
    return result.exit_code, result.stdout, result.output


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    code, stdout, output = _cli(
        tmp_path, "keys", "create", "ci", "--principal", "alice", "--attr", "team=red",
        "--attr", "project=x", "--role", "admin", "local",
    )
    assert code == 0, output
    last = output.rstrip("\n").splitlines()[-1]
    assert KEY.match(last), output  # the key alone on the last line
    assert stdout.strip() == last  # and nothing else on stdout: KEY=$(fnstack keys create x)
    assert "alice" in output and "teams=red" in output and "roles=admin" in output
    key_id = KEY.match(last).group(1)  # type: ignore[union-attr]

    # The key works against the store the CLI wrote (the local distribution's SQLite).
    async def check() -> Owner | None:
        kv = open_kv(
            KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "local/kv.db")), "registry"
        )
        try:
            return await KeyStore(kv).verify(last)
        finally:
            await kv.close()

    owner = asyncio.run(check())
    assert owner == Owner("alice", {"teams": ["red"], "projects": ["x"], "roles": ["admin"]})

    code, _, output = _cli(tmp_path, "keys", "create", "second")
    assert code == 0
    code, stdout, output = _cli(tmp_path, "keys", "list")
    assert code == 0, output
    assert key_id in stdout and "ci" in stdout and "second" in stdout and "active" in stdout
    assert last.rsplit("-", 1)[1] not in stdout  # no secret in the listing

    code, stdout, output = _cli(tmp_path, "keys", "revoke", key_id, "local")
    assert code == 0 and "revoked" in stdout, output
    assert asyncio.run(check()) is None
    code, stdout, _ = _cli(tmp_path, "keys", "list", "--principal", "alice")
    assert "revoked" in stdout and "second" not in stdout

    # Revoking by the key itself works too; an unknown id is an error that says what to do.
    code, _, output = _cli(tmp_path, "keys", "revoke", last)
    assert code == 0, output
    code, _, output = _cli(tmp_path, "keys", "revoke", "0123456789abcdef00")
    assert code == 2 and "fnstack keys list" in output


def test_cli_errors(tmp_path: Path) -> None:
    code, _, output = _cli(tmp_path, "keys", "create", "x", "--attr", "teamred")
    assert code == 2 and "NAME=VALUE" in output
    code, _, output = _cli(tmp_path, "keys", "list", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file" in output
    code, stdout, _ = _cli(tmp_path, "keys", "list")
    assert code == 0 and "fnstack keys create" in stdout
