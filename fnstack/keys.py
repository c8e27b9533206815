"""API keys: created once, stored hashed, verified with one read.

A key reads ``fns-<key_id>-<secret>``. The key id is public (it names the key in
listings and in ``fnstack keys revoke``); the secret is 43 url-safe characters from
``secrets.token_urlsafe(32)`` and is never stored: the record under ``apikey:<key_id>``
in the ``registry`` kv store holds its sha256. Verification is one ``get`` by key id
and one constant-time comparison of hashes, so no listing or scan is ever needed.

    fns-0194f3a2b7c1d9e5a3-Qm9Yx...   ->   get("apikey:0194f3a2b7c1d9e5a3")
         \\______ key id ______/ \\secret/        value.hash == sha256(secret)?
                                                  value.revoked_at is None?

The record's owner is the key's principal, so owner-filtered listings (``list(principal=)``)
never scan other principals' keys.
"""

from __future__ import annotations

import builtins  # `KeyStore.list` shadows the builtin in class scope
import hashlib
import hmac
import re
import secrets
import time
import weakref
from typing import Literal

from pydantic import BaseModel

from fnstack.errors import InvalidRequestError, NotFoundError, PreconditionFailedError
from fnstack.storage import KVRecord, KVStore, Owner

__all__ = ["KEY_PREFIX", "RECORD_PREFIX", "KeyInfo", "KeyStore", "hash_secret", "parse_key"]

KEY_PREFIX = "fns-"
RECORD_PREFIX = "apikey:"
# Time-ordered hex key ids: listings come back in creation order for free.
_KEY_ID = re.compile(r"^[0-9a-f]{12,32}$")
_CACHE_MAX = 10_000

_Entry = tuple[float, str | None, Owner | None]
_CACHES: weakref.WeakKeyDictionary[KVStore, dict[str, _Entry]] = weakref.WeakKeyDictionary()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """``fns-<key_id>-<secret>`` -> (key_id, secret); None when it is not shaped so."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX):].partition("-")
    if not sep or not secret or len(secret) > 256 or not _KEY_ID.match(key_id):
        return None
    return key_id, secret


_last_ms = 0


def _new_key_id() -> str:
    # 12 hex digits of milliseconds (good until year 10889) + 6 random: sorts by time,
    # and strictly by creation order within a process (never the same millisecond twice).
    global _last_ms
    _last_ms = max(int(time.time() * 1000), _last_ms + 1)
    return f"{_last_ms:012x}{secrets.token_hex(3)}"


class KeyInfo(BaseModel):
    """What may be shown about a key: never its secret or hash."""

    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    principal: str
    attributes: dict[str, list[str]]
    created_at: int
    revoked_at: int | None = None
    # e.g. "fns-0194f3a2b7c1d9e5a3-...x7Qa": enough to recognise a key, not to use it.
    redacted_value: str

    @property
    def roles(self) -> list[str]:
        return self.attributes.get("roles", [])

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _info(value: dict[str, object]) -> KeyInfo:
    return KeyInfo(
        id=str(value["key_id"]),
        name=str(value["name"]),
        principal=str(value["principal"]),
        attributes=value.get("attributes") or {},  # type: ignore[arg-type]
        created_at=int(value["created_at"]),  # type: ignore[call-overload]
        revoked_at=value.get("revoked_at"),  # type: ignore[arg-type]
        redacted_value=f"{KEY_PREFIX}{value['key_id']}-...{value['last4']}",
    )


class KeyStore:
    """API keys in a kv store (the ``registry`` store).

    ``cache_ttl_s`` is how long a verified key (or an unknown or revoked key id) is
    trusted in this process before the store is read again: a key revoked elsewhere
    (another process, another Lambda function) stops working within that time. A key
    revoked through this instance stops at once. 0 reads the store on every call.
    """

    def __init__(self, kv: KVStore, *, cache_ttl_s: float = 0.0) -> None:
        self.kv = kv
        self.cache_ttl_s = cache_ttl_s
        # key_id -> (trusted until (monotonic), sha256 of the secret or None, owner).
        # Shared by every KeyStore over the same kv store object, so a revocation
        # through one (the /v1/keys service) is seen at once by another (the
        # authenticator) in this process.
        self._cache = _CACHES.setdefault(kv, {})

    async def create(
        self,
        name: str,
        *,
        principal: str | None = None,
        attributes: dict[str, list[str]] | None = None,
        roles: builtins.list[str] | None = None,
    ) -> tuple[KeyInfo, str]:
        """A new key for ``principal`` (default: ``name``). Returns its info and the key
        itself, which exists only in this return value: store it now."""
        name = name.strip()
        if not name or len(name) > 256:
            raise InvalidRequestError("a key name must be 1-256 characters", param="name")
        who = (principal if principal is not None else name).strip()
        if not who or len(who) > 256:
            raise InvalidRequestError("a principal must be 1-256 characters", param="principal")
        attrs: dict[str, list[str]] = {}
        for attr, values in (attributes or {}).items():
            if not attr or not isinstance(values, builtins.list):
                raise InvalidRequestError(
                    f"attribute {attr!r} must be a non-empty name with a list of values",
                    param="attributes",
                )
            attrs[attr] = [str(v) for v in values]
        if roles:
            attrs["roles"] = list(dict.fromkeys([*attrs.get("roles", []), *roles]))
        secret = secrets.token_urlsafe(32)
        key_id = _new_key_id()
        value: dict[str, object] = {
            "key_id": key_id,
            "name": name,
            "principal": who,
            "attributes": attrs,
            "created_at": int(time.time()),
            "revoked_at": None,
            "hash": hash_secret(secret),
            "last4": secret[-4:],
        }
        await self.kv.put(
            RECORD_PREFIX + key_id, value, owner=Owner(who, attrs), if_absent=True
        )
        return _info(value), f"{KEY_PREFIX}{key_id}-{secret}"

    async def get(self, key_id: str) -> KeyInfo:
        """The key's info (revoked keys included); NotFoundError when there is none."""
        return _info((await self._record(key_id)).value)

    async def list(self, *, principal: str | None = None) -> builtins.list[KeyInfo]:
        """Every key (or one principal's), oldest first, revoked ones included."""
        out: builtins.list[KeyInfo] = []
        after: str | None = None
        while True:
            page = await self.kv.list(RECORD_PREFIX, limit=1000, after=after, owner=principal)
            out.extend(_info(r.value) for r in page.records)
            if not page.has_more:
                return out
            after = page.last_cursor

    async def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key for good. Revoking a revoked key changes nothing."""
        while True:
            record = await self._record(key_id)
            if record.value.get("revoked_at") is not None:
                break
            value = {**record.value, "revoked_at": int(time.time())}
            try:
                record = await self.kv.put(
                    record.key, value, owner=record.owner, if_version=record.version
                )
                break
            except PreconditionFailedError:
                continue  # changed under us (revoked concurrently): read again
        self._cache.pop(key_id, None)
        return _info(record.value)

    async def verify(self, token: str) -> Owner | None:
        """The owner of ``token`` when it is a live key of this store, else None."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        now = time.monotonic()
        hit = self._cache.get(key_id) if self.cache_ttl_s > 0 else None
        if hit is None or hit[0] <= now:
            hit = await self._load(key_id, now)
        expected, owner = hit[1], hit[2]
        if expected is None:
            return None
        # Compared as hashes, in constant time: nothing about the stored secret leaks
        # through timing, and the cache holds no secret either.
        if not hmac.compare_digest(hash_secret(secret), expected):
            return None
        return owner

    async def _load(self, key_id: str, now: float) -> _Entry:
        record = await self.kv.get(RECORD_PREFIX + key_id)
        entry: _Entry
        if record is None or record.value.get("revoked_at") is not None:
            entry = (now + self.cache_ttl_s, None, None)
        else:
            v = record.value
            entry = (
                now + self.cache_ttl_s,
                str(v["hash"]),
                Owner(str(v["principal"]), dict(v.get("attributes") or {})),
            )
        if self.cache_ttl_s > 0:
            if len(self._cache) >= _CACHE_MAX:
                # Rare (10k distinct key ids within one TTL): start over rather than
                # track recency on the hot path.
                self._cache.clear()
            self._cache[key_id] = entry
        return entry

    async def _record(self, key_id: str) -> KVRecord:
        if not _KEY_ID.match(key_id):
            raise NotFoundError(
                f"no API key {key_id!r}; see `fnstack keys list` for the key ids",
                param="key_id",
            )
        record = await self.kv.get(RECORD_PREFIX + key_id)
        if record is None:
            raise NotFoundError(
                f"no API key {key_id!r}; see `fnstack keys list` for the key ids",
                param="key_id",
            )
        return record
