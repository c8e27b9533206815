"""kv on DynamoDB: one table shared by every namespace.

Item layout (template.yaml defines exactly these keys and the index)::

    pk      S  f"{namespace}#{shard}"             table partition key; shard =
                                                  crc32(key) % shards (default 16;
                                                  shards: 1 -> pk = namespace)
    sk      S  record key                         table sort key
    v       S  value, JSON
    ver     N  version
    own     S  owner principal
    ownj    S  owner, JSON
    exp     N  expiry, epoch seconds (float)      only with a TTL; decides liveness
    ttl     N  ceil(exp)                          only with a TTL; DynamoDB's TTL attribute
    gsi1pk  S  f"{namespace}#{principal}"         GSI `by_owner` (projection ALL),
    gsi1sk  S  record key                         for owner-filtered listings

Sharding: with pk = namespace every write of a namespace (every stored chat completion)
would land on one partition, and one partition takes at most ~1,000 writes/s. The
shard suffix spreads them over ``shards`` partitions; get/put/delete still address one
item (one request), owner-filtered listings still read one GSI partition
(``gsi1pk`` has no shard), and an unfiltered listing queries every shard concurrently
and merges them by key (`_merge_shards`).

DynamoDB's TTL sweeper deletes days late, so ``exp`` alone decides whether a record is
live: the base filters every read and the write conditions treat an expired item as
absent. Every conditional write is one request, so DynamoDB makes it atomic::

    put(if_absent)        PutItem IF attribute_not_exists(pk) OR exp <= :now
                            no item ...................... written
                            item, expired ................ written  (no exp: compare is false)
                            item, live ................... ConditionalCheckFailed -> False
    put(if_version=N)     PutItem IF ver = :v AND (attribute_not_exists(exp) OR exp > :now)
    delete(if_version=N)  DeleteItem IF (the same)
    delete()              DeleteItem RETURN ALL_OLD -> was the old item live?

Counters (`incr`) live in top-level number attributes ``n_<field>`` (no ``v``), because
``ADD`` works only on top-level numbers; `_raw` turns them back into the value. ``ADD``
cannot restart an expired count at 0, and an update expression has no branches, so an
increment is one request in the common cases and a second one only after expiry::

    1. UpdateItem  SET ver = if_not_exists(ver, 0) + 1, own/ownj/gsi1*/exp/ttl =
                       if_not_exists(<attr>, <this increment's>)
                   ADD n_f :d  (each field)
                   IF    attribute_not_exists(pk)                   absent: created at d
                                                                    (branch left out when
                                                                    some d > L)
                      OR (attribute_exists(pk) AND attribute_not_exists(v) AND live
                          AND (attribute_not_exists(n_f) OR n_f <= L - d) ...)
                   RETURN ALL_NEW ........................ the new counts
       ConditionalCheckFailed, RETURN ALL_OLD, the old item says why:
         none ............................ some d > L: refused -> None
         live counters ................... a limit refused it -> None
         live, a `put` record (has v) .... 3.
         expired ......................... 2. (None when some d > L)
    2. PutItem     the fresh record {n_f: d}, version 1, exp = now + ttl
                   IF attribute_not_exists(pk) OR exp <= :now
         written ......................... {f: d}
         ConditionalCheckFailed .......... another writer restarted it first -> 1.
    3. PutItem     v's integers + d as counters, IF ver = :seen AND live
         (v not all integers: ConflictError)  ConditionalCheckFailed -> 1.

Each retry means another writer's request succeeded, so the loop ends; it gives up
(ConflictError) after a few rounds rather than spin.
"""

from __future__ import annotations

import asyncio
import json
import math
import zlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from fnstack.errors import ConflictError, FnstackError, InternalError, PayloadTooLargeError
from fnstack.storage._aws import call, shared_client, translate_client_error
from fnstack.storage.base import (
    Condition,
    Increment,
    KVStore,
    Order,
    RawRecord,
    counters_of,
)

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        QueryInputTypeDef,
        UniversalAttributeValueTypeDef,
    )

    from fnstack.storage import KVDynamoDBConfig

__all__ = ["OWNER_INDEX", "DynamoDBKVStore"]

P = ParamSpec("P")
R = TypeVar("R")

OWNER_INDEX = "by_owner"

_THROTTLED = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
_LIVE = "(attribute_not_exists(exp) OR exp > :now)"
_COUNTER = "n_"  # attribute prefix of a counter field
_INCR_ROUNDS = 8


class _ConditionFailed(Exception):
    """ConditionalCheckFailedException, before the boundary turns errors into fnstack's;
    with the old item when the request asked for it (ReturnValuesOnConditionCheckFailure)."""

    def __init__(self, item: dict[str, AttributeValueTypeDef] | None = None) -> None:
        super().__init__()
        self.item = item


class DynamoDBKVStore(KVStore):
    def __init__(self, config: KVDynamoDBConfig, namespace: str) -> None:
        super().__init__(namespace)
        self.table = config.table
        self.shards = config.shards
        self._resource = f"DynamoDB table {config.table!r}"
        self._client = shared_client(
            "dynamodb",
            config.region,
            config.endpoint_url,
            resource=self._resource,
            read_timeout=10,
        )

    # --- primitives ------------------------------------------------------------------

    async def _get(self, key: str) -> RawRecord | None:
        resp = await self._call(
            self._client.get_item, TableName=self.table, Key=self._key(key), ConsistentRead=True
        )
        item = resp.get("Item")
        return self._raw(item) if item else None

    async def _put(self, raw: RawRecord, cond: Condition) -> bool:
        item = self._item(raw)
        now: UniversalAttributeValueTypeDef = {"N": _num(cond.now)}
        try:
            if cond.kind == "none":
                await self._call(self._client.put_item, TableName=self.table, Item=item)
            elif cond.kind == "absent":
                await self._call(
                    self._client.put_item,
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(pk) OR exp <= :now",
                    ExpressionAttributeValues={":now": now},
                )
            else:
                await self._call(
                    self._client.put_item,
                    TableName=self.table,
                    Item=item,
                    ConditionExpression=f"ver = :v AND {_LIVE}",
                    ExpressionAttributeValues={":v": {"N": str(cond.version)}, ":now": now},
                )
        except _ConditionFailed:
            return False
        return True

    async def _delete(self, key: str, cond: Condition) -> bool:
        if cond.kind == "version":
            try:
                await self._call(
                    self._client.delete_item,
                    TableName=self.table,
                    Key=self._key(key),
                    ConditionExpression=f"ver = :v AND {_LIVE}",
                    ExpressionAttributeValues={
                        ":v": {"N": str(cond.version)},
                        ":now": {"N": _num(cond.now)},
                    },
                )
            except _ConditionFailed:
                return False
            return True
        # Unconditional: delete whatever is there, then tell from the old image whether
        # a *live* record went away (an expired one was already gone for the caller).
        resp = await self._call(
            self._client.delete_item,
            TableName=self.table,
            Key=self._key(key),
            ReturnValues="ALL_OLD",
        )
        old = resp.get("Attributes")
        if not old:
            return False
        expires_at = self._raw(old).expires_at
        return expires_at is None or expires_at > cond.now

    async def _incr(self, inc: Increment) -> dict[str, int] | None:
        fresh = inc.fresh()
        for _ in range(_INCR_ROUNDS):
            try:
                return await self._update_counters(inc, create=fresh is not None)
            except _ConditionFailed as failed:
                old = failed.item
            if old is None:
                if fresh is None:
                    return None
                continue  # deleted since: go round
            raw = self._raw(old)
            if raw.expires_at is not None and raw.expires_at <= inc.now:
                if fresh is None:
                    return None
                counter_item = self._counter_item(inc.key, fresh, 1, inc, None)
                if await self._put_counters(
                    counter_item, "attribute_not_exists(pk) OR exp <= :now", inc.now
                ):
                    return fresh
                continue
            if "v" not in old:
                return None  # live counters: a limit refused the increment
            # A live record that `put` wrote: convert it when its fields are integers.
            counts = inc.apply(counters_of(inc.key, json.loads(raw.value)))
            if counts is None:
                return None
            counter_item = self._counter_item(inc.key, counts, raw.version + 1, inc, raw)
            if await self._put_counters(
                counter_item, f"ver = :v AND {_LIVE}", inc.now, version=raw.version
            ):
                return counts
        raise ConflictError(
            f"counter {inc.key!r} changed under {_INCR_ROUNDS} attempts in a row; retry",
            code="contention",
        )

    async def _update_counters(self, inc: Increment, *, create: bool) -> dict[str, int]:
        names: dict[str, str] = {}
        values: dict[str, UniversalAttributeValueTypeDef] = {
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
            ":now": {"N": _num(inc.now)},
            ":own": {"S": inc.owner},
            ":ownj": {"S": inc.owner_json},
            ":g1pk": {"S": f"{self.namespace}#{inc.owner}"},
            ":g1sk": {"S": inc.key},
        }
        sets = [
            "ver = if_not_exists(ver, :zero) + :one",
            "own = if_not_exists(own, :own)",
            "ownj = if_not_exists(ownj, :ownj)",
            "gsi1pk = if_not_exists(gsi1pk, :g1pk)",
            "gsi1sk = if_not_exists(gsi1sk, :g1sk)",
        ]
        if inc.expires_at is not None:
            sets += ["exp = if_not_exists(exp, :exp)", "#ttl = if_not_exists(#ttl, :ttl)"]
            names["#ttl"] = "ttl"  # a reserved word in expressions
            values[":exp"] = {"N": _num(inc.expires_at)}
            values[":ttl"] = {"N": str(math.ceil(inc.expires_at))}
        adds, limits = [], []
        for i, (name, delta) in enumerate(inc.deltas.items()):
            names[f"#n{i}"] = _COUNTER + name
            values[f":d{i}"] = {"N": str(delta)}
            adds.append(f"#n{i} :d{i}")
            if name in inc.limits:
                values[f":m{i}"] = {"N": str(inc.limits[name] - delta)}
                limits.append(f"(attribute_not_exists(#n{i}) OR #n{i} <= :m{i})")
        live = " AND ".join(["attribute_exists(pk)", "attribute_not_exists(v)", _LIVE, *limits])
        condition = f"attribute_not_exists(pk) OR ({live})" if create else live
        resp = await self._call(
            self._client.update_item,
            TableName=self.table,
            Key=self._key(inc.key),
            UpdateExpression=f"SET {', '.join(sets)} ADD {', '.join(adds)}",
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        return _counters(resp["Attributes"])

    async def _put_counters(
        self,
        item: dict[str, UniversalAttributeValueTypeDef],
        condition: str,
        now: float,
        version: int | None = None,
    ) -> bool:
        values: dict[str, UniversalAttributeValueTypeDef] = {":now": {"N": _num(now)}}
        if version is not None:
            values[":v"] = {"N": str(version)}
        try:
            await self._call(
                self._client.put_item,
                TableName=self.table,
                Item=item,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except _ConditionFailed:
            return False
        return True

    def _counter_item(
        self,
        key: str,
        counts: dict[str, int],
        version: int,
        inc: Increment,
        old: RawRecord | None,
    ) -> dict[str, UniversalAttributeValueTypeDef]:
        """A whole counter item: fresh (``old`` None) or converted from ``old``."""
        owner = old.owner if old else inc.owner
        expires_at = old.expires_at if old and old.expires_at is not None else inc.expires_at
        item: dict[str, UniversalAttributeValueTypeDef] = {
            **self._key(key),
            "ver": {"N": str(version)},
            "own": {"S": owner},
            "ownj": {"S": old.owner_json if old else inc.owner_json},
            "gsi1pk": {"S": f"{self.namespace}#{owner}"},
            "gsi1sk": {"S": key},
        }
        item.update({_COUNTER + name: {"N": str(n)} for name, n in counts.items()})
        if expires_at is not None:
            item["exp"] = {"N": _num(expires_at)}
            item["ttl"] = {"N": str(math.ceil(expires_at))}
        return item

    async def _scan(
        self, prefix: str, start_after: str | None, order: Order, limit: int, owner: str | None
    ) -> list[RawRecord]:
        if owner is not None or self.shards == 1:
            # Owner-filtered listings read the GSI (eventually consistent: GSIs cannot
            # read strongly): one partition per owner, whatever the shard count.
            pk = f"{self.namespace}#{owner}" if owner is not None else self.namespace
            return await self._query(pk, prefix, start_after, order, limit, owner)
        return await self._merge_shards(prefix, start_after, order, limit)

    async def _merge_shards(
        self, prefix: str, start_after: str | None, order: Order, limit: int
    ) -> list[RawRecord]:
        """The first ``limit`` records of all shards in key order: a k-way merge.

        Each shard is a key-ordered run. Every shard is read a short page at a time
        (about its share of ``limit``), all pending pages in one concurrent round, and
        a record is taken only while every unfinished shard has one buffered, so the
        smallest buffered head is the next record overall. Evenly spread keys need one
        round of ``shards`` small queries, reading little more than ``limit`` items.
        """
        pks = [f"{self.namespace}#{n}" for n in range(self.shards)]
        page = max(4, -(-limit // self.shards) + 2)
        buffers: list[deque[RawRecord]] = [deque() for _ in pks]
        after: list[str | None] = [start_after] * len(pks)
        done = [False] * len(pks)
        pick = min if order == "asc" else max
        out: list[RawRecord] = []
        while len(out) < limit:
            empty = [i for i, buf in enumerate(buffers) if not buf and not done[i]]
            if empty:
                pages = await asyncio.gather(
                    *(self._query(pks[i], prefix, after[i], order, page, None) for i in empty)
                )
                for i, got in zip(empty, pages, strict=True):
                    buffers[i].extend(got)
                    done[i] = len(got) < page
                    if got:
                        after[i] = got[-1].key
            ready = [i for i, buf in enumerate(buffers) if buf]
            if not ready:
                break
            out.append(buffers[pick(ready, key=lambda i: buffers[i][0].key)].popleft())
        return out

    async def _query(
        self,
        pk_value: str,
        prefix: str,
        start_after: str | None,
        order: Order,
        limit: int,
        owner: str | None,
    ) -> list[RawRecord]:
        """Up to ``limit`` records of one partition (of the table, or of the owner index
        when ``owner`` is given) in sort-key order, strongly consistent on the table."""
        pk, sk = ("gsi1pk", "gsi1sk") if owner is not None else ("pk", "sk")
        values: dict[str, UniversalAttributeValueTypeDef] = {":pk": {"S": pk_value}}
        bounds = _sort_condition(sk, prefix, start_after, order)
        if bounds is None:
            return []
        condition = f"{pk} = :pk"
        if bounds:
            expression, bound_values = bounds
            condition += f" AND {expression}"
            values.update({name: {"S": value} for name, value in bound_values.items()})
        params: QueryInputTypeDef = {
            "TableName": self.table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": order == "asc",
        }
        if owner is not None:
            params["IndexName"] = OWNER_INDEX
        else:
            params["ConsistentRead"] = True

        def wanted(raw: RawRecord) -> bool:
            # BETWEEN is inclusive, so the cursor row and the prefix's successor may
            # come back; and f"{ns}#{owner}" is ambiguous when either contains "#".
            if not raw.key.startswith(prefix):
                return False
            if start_after is not None and not (
                raw.key > start_after if order == "asc" else raw.key < start_after
            ):
                return False
            return owner is None or raw.owner == owner

        out: list[RawRecord] = []
        while len(out) < limit:
            # +1: room for the inclusive bound row that `wanted` drops.
            params["Limit"] = limit - len(out) + 1
            resp = await self._call(self._client.query, **params)
            out.extend(raw for raw in map(self._raw, resp.get("Items", [])) if wanted(raw))
            last = resp.get("LastEvaluatedKey")
            if not last:
                break
            params["ExclusiveStartKey"] = last
        return out[:limit]

    # --- items -----------------------------------------------------------------------

    def _key(self, key: str) -> dict[str, UniversalAttributeValueTypeDef]:
        return {"pk": {"S": self.partition(key)}, "sk": {"S": key}}

    def partition(self, key: str) -> str:
        """The table partition key of ``key``: its namespace and shard."""
        if self.shards == 1:
            return self.namespace
        # crc32: stable across processes and Python versions, unlike hash().
        return f"{self.namespace}#{zlib.crc32(key.encode()) % self.shards}"

    def _item(self, raw: RawRecord) -> dict[str, UniversalAttributeValueTypeDef]:
        item: dict[str, UniversalAttributeValueTypeDef] = {
            **self._key(raw.key),
            "v": {"S": raw.value},
            "ver": {"N": str(raw.version)},
            "own": {"S": raw.owner},
            "ownj": {"S": raw.owner_json},
            "gsi1pk": {"S": f"{self.namespace}#{raw.owner}"},
            "gsi1sk": {"S": raw.key},
        }
        if raw.expires_at is not None:
            item["exp"] = {"N": _num(raw.expires_at)}
            item["ttl"] = {"N": str(math.ceil(raw.expires_at))}
        return item

    @staticmethod
    def _raw(item: dict[str, AttributeValueTypeDef]) -> RawRecord:
        exp = item.get("exp")
        value = item["v"]["S"] if "v" in item else json.dumps(_counters(item))
        return RawRecord(
            key=item["sk"]["S"],
            value=value,
            version=int(item["ver"]["N"]),
            owner=item["own"]["S"],
            owner_json=item["ownj"]["S"],
            expires_at=float(exp["N"]) if exp else None,
        )

    # --- the error boundary ------------------------------------------------------------

    async def _call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await call(self._resource, self._boundary, fn, *args, **kwargs)

    def _boundary(self, exc: ClientError) -> Exception:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            # botocore's stubs leave out the old item this request may ask for.
            old = cast("dict[str, Any]", exc.response).get("Item")
            return _ConditionFailed(old)
        return self._translate(exc)

    def _translate(self, exc: ClientError) -> FnstackError:
        what = f"DynamoDB {exc.operation_name} on table {self.table!r}"
        return translate_client_error(exc, what, throttled=_THROTTLED, claim=self._claim)

    def _claim(self, code: str, message: str, what: str) -> FnstackError | None:
        if code == "ResourceNotFoundException":
            return InternalError(
                f"DynamoDB table {self.table!r} does not exist (or has no index "
                f"{OWNER_INDEX!r}) in {self._client.meta.region_name}; deploy the stack or fix "
                "the table name in storage.backends",
                code="table_not_found",
            )
        if code == "ValidationException" and "item size" in message.lower():
            return PayloadTooLargeError(
                f"record too large for {what}: DynamoDB items hold at most 400 KB"
            )
        return None


def _counters(item: dict[str, AttributeValueTypeDef]) -> dict[str, int]:
    return {
        name[len(_COUNTER) :]: int(value["N"])
        for name, value in item.items()
        if name.startswith(_COUNTER)
    }


def _num(value: float) -> str:
    # repr is the shortest string that round-trips the float; DynamoDB keeps 38 digits.
    return repr(value)


def _sort_condition(
    sk: str, prefix: str, start_after: str | None, order: Order
) -> tuple[str, dict[str, str]] | tuple[()] | None:
    """The sort-key condition for ``prefix`` and a cursor: () for none, None when empty.

    A key condition allows one test on the sort key, so prefix + cursor becomes one
    inclusive ``BETWEEN`` over ``[prefix, successor(prefix)]`` narrowed by the cursor;
    the caller drops the bound rows that do not belong.
    """
    if start_after is None:
        return (f"begins_with({sk}, :prefix)", {":prefix": prefix}) if prefix else ()
    beyond = f"{sk} > :after" if order == "asc" else f"{sk} < :after"
    if not prefix:
        return beyond, {":after": start_after}
    hi = _successor(prefix)
    if hi is None:  # a prefix of only U+10FFFF: no upper bound, filter instead
        return beyond, {":after": start_after}
    lo = prefix
    if order == "asc":
        lo = max(lo, start_after)
    else:
        hi = min(hi, start_after)
    if lo > hi:  # DynamoDB rejects an inverted BETWEEN; the range is empty anyway
        return None
    return f"{sk} BETWEEN :lo AND :hi", {":lo": lo, ":hi": hi}


def _successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``.

    Code point order is UTF-8 byte order, the order DynamoDB sorts strings in.
    """
    chars = list(prefix)
    while chars:
        point = ord(chars.pop()) + 1
        if point <= 0x10FFFF:
            # Surrogates cannot be encoded in UTF-8; the next storable point follows them.
            return "".join(chars) + chr(0xE000 if point == 0xD800 else point)
    return None
