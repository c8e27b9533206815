"""kv on SQLite: the embedded default. One file, WAL mode, safe across processes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fnstack.storage.base import (
    Condition,
    Increment,
    KVStore,
    Order,
    RawRecord,
    counters_of,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    owner_json TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_owner ON kv (namespace, owner, key);
"""

_COLUMNS = "key, value, version, owner, owner_json, expires_at"
_UPSERT = (
    "INSERT INTO kv (namespace, key, value, version, owner, owner_json, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO UPDATE SET "
    "value=excluded.value, version=excluded.version, owner=excluded.owner, "
    "owner_json=excluded.owner_json, expires_at=excluded.expires_at"
)
# The upsert's WHERE makes "absent or expired" one atomic statement.
_CREATE = _UPSERT + " WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?"


class SqliteDatabase:
    """One connection per database file, shared by every namespace on it.

    sqlite3 calls block, so they run in a worker thread; a lock serialises them on the
    one connection (SQLite serialises writers anyway), and ``busy_timeout`` lets other
    processes' writers wait instead of failing.
    """

    _instances: dict[str, SqliteDatabase] = {}
    _instances_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        # Reads get a connection of their own: in WAL mode they never wait for a writer,
        # so a write stalled on another process's lock (up to busy_timeout) stalls
        # neither lookups nor listings.
        self._rconn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._rconn.execute("PRAGMA busy_timeout=30000")
        self._rlock = threading.Lock()
        self.refs = 0

    @classmethod
    def open(cls, path: Path) -> SqliteDatabase:
        key = str(path.resolve())
        with cls._instances_lock:
            db = cls._instances.get(key)
            if db is None:
                db = cls._instances[key] = cls(path)
            db.refs += 1
            return db

    def release(self) -> None:
        with self._instances_lock:
            self.refs -= 1
            if self.refs <= 0:
                self._instances.pop(str(self.path.resolve()), None)
                self._conn.close()
                self._rconn.close()

    def _run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.fetchall(), cur.rowcount

    async def run(
        self, sql: str, params: tuple[Any, ...] = ()
    ) -> tuple[list[tuple[Any, ...]], int]:
        return await asyncio.to_thread(self._run, sql, params)

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._rlock:
            return self._rconn.execute(sql, params).fetchall()

    async def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read-only statement on the read connection."""
        return await asyncio.to_thread(self._read, sql, params)

    def _run_each(self, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._conn.execute(sql, params).rowcount for params in rows]
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return counts

    async def run_each(self, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """``sql`` once per row of parameters, in one transaction and one thread hop
        (the hop costs several times what a small insert does); rowcount of each."""
        return await asyncio.to_thread(self._run_each, sql, rows)

    def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            # IMMEDIATE takes the write lock before the read, so no other process can
            # write between this transaction's read and its write.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in one write transaction (read-modify-write), in a worker
        thread; rolled back when it raises."""
        return await asyncio.to_thread(self._transact, fn)


class SqliteKVStore(KVStore):
    def __init__(self, db_path: Path, namespace: str) -> None:
        super().__init__(namespace)
        self._db = SqliteDatabase.open(db_path)

    async def _get(self, key: str) -> RawRecord | None:
        rows = await self._db.read(
            f"SELECT {_COLUMNS} FROM kv WHERE namespace=? AND key=?", (self.namespace, key)
        )
        return RawRecord(*rows[0]) if rows else None

    def _values(self, raw: RawRecord) -> tuple[Any, ...]:
        return (
            self.namespace, raw.key, raw.value, raw.version, raw.owner, raw.owner_json,
            raw.expires_at,
        )

    async def _put(self, raw: RawRecord, cond: Condition) -> bool:
        values = self._values(raw)
        if cond.kind == "none":
            await self._db.run(_UPSERT, values)
            return True
        if cond.kind == "absent":
            _, n = await self._db.run(_CREATE, (*values, cond.now))
            return n == 1
        _, n = await self._db.run(
            "UPDATE kv SET value=?, version=?, owner=?, owner_json=?, expires_at=? "
            "WHERE namespace=? AND key=? AND version=? AND (expires_at IS NULL OR expires_at > ?)",
            (
                raw.value, raw.version, raw.owner, raw.owner_json, raw.expires_at,
                self.namespace, raw.key, cond.version, cond.now,
            ),
        )
        return n == 1

    async def _put_many(self, raws: Sequence[RawRecord], cond: Condition) -> list[bool]:
        if cond.kind != "absent":
            return await super()._put_many(raws, cond)
        counts = await self._db.run_each(
            _CREATE, [(*self._values(raw), cond.now) for raw in raws]
        )
        return [n == 1 for n in counts]

    async def _delete(self, key: str, cond: Condition) -> bool:
        live = "(expires_at IS NULL OR expires_at > ?)"
        if cond.kind == "version":
            _, n = await self._db.run(
                f"DELETE FROM kv WHERE namespace=? AND key=? AND version=? AND {live}",
                (self.namespace, key, cond.version, cond.now),
            )
            return n == 1
        # Liveness is judged here, not in RETURNING: SQLite 3.40 evaluates
        # `expires_at IS NULL` there as false even when it is NULL.
        rows, _ = await self._db.run(
            "DELETE FROM kv WHERE namespace=? AND key=? RETURNING expires_at",
            (self.namespace, key),
        )
        return bool(rows) and (rows[0][0] is None or rows[0][0] > cond.now)

    async def _incr(self, inc: Increment) -> dict[str, int] | None:
        def increment(conn: sqlite3.Connection) -> dict[str, int] | None:
            row = conn.execute(
                "SELECT value, version, owner, owner_json, expires_at FROM kv "
                "WHERE namespace=? AND key=?",
                (self.namespace, inc.key),
            ).fetchone()
            if row is not None and (row[4] is None or row[4] > inc.now):
                counts = inc.apply(counters_of(inc.key, json.loads(row[0])))
                # A live record keeps its owner; it keeps its expiry too, and gains the
                # increment's when it had none (as DynamoDB's if_not_exists does).
                version, owner, owner_json = row[1] + 1, row[2], row[3]
                expires_at = row[4] if row[4] is not None else inc.expires_at
            else:
                counts = inc.fresh()
                version, owner, owner_json = 1, inc.owner, inc.owner_json
                expires_at = inc.expires_at
            if counts is None:
                return None
            value = json.dumps(counts, separators=(",", ":"))
            conn.execute(
                _UPSERT,
                (self.namespace, inc.key, value, version, owner, owner_json, expires_at),
            )
            return counts

        return await self._db.transact(increment)

    async def _scan(
        self, prefix: str, start_after: str | None, order: Order, limit: int, owner: str | None
    ) -> list[RawRecord]:
        where = ["namespace=?"]
        params: list[Any] = [self.namespace]
        if prefix:
            # Range instead of LIKE: keys may contain % and _, and the range uses the index.
            where.append("key >= ? AND key < ?")
            params += [prefix, prefix + "\U0010ffff"]
        if start_after is not None:
            where.append("key > ?" if order == "asc" else "key < ?")
            params.append(start_after)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        direction = "ASC" if order == "asc" else "DESC"
        rows = await self._db.read(
            f"SELECT {_COLUMNS} FROM kv WHERE {' AND '.join(where)} "
            f"ORDER BY key {direction} LIMIT ?",
            (*params, limit),
        )
        return [RawRecord(*r) for r in rows]

    async def close(self) -> None:
        self._db.release()
