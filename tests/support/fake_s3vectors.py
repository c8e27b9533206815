"""A fake Amazon S3 Vectors speaking its real wire format (moto has no QueryVectors).

REST-JSON as botocore's model (data/s3vectors/2025-07-15/service-2.json) defines it:
every operation is ``POST /<OperationName>`` with a JSON body, errors carry their type
in ``x-amzn-ErrorType`` and their status from the model (NotFoundException 404,
ConflictException 409, ValidationException 400 with ``fieldList``). Requests must be
SigV4-signed for the ``s3vectors`` service (the signature itself is not verified).

Behaviour follows the service's documentation: vector buckets hold indexes (3-63
lowercase letters, digits, '-' and '.'); PutVectors overwrites by key (1-500 vectors);
cosine indexes refuse zero vectors; QueryVectors takes ``topK`` 1-100 and answers
exactly (a fake needs no ANN) with cosine distance ``1 - cos``; metadata filters use
the documented operators ($eq $ne $gt $gte $lt $lte $in $nin $exists $and $or; a bare
value means $eq), where $gt/$gte/$lt/$lte take numbers only, $ne/$nin also match a
vector that lacks the key, and a key named in ``nonFilterableMetadataKeys`` cannot be
filtered on.

    with FakeS3Vectors() as fake:
        boto3.client("s3vectors", endpoint_url=fake.url, region_name="us-east-1")
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.eventstream import ThreadedServer, aws_error

__all__ = ["ApiError", "FakeS3Vectors", "check_filter", "filter_matches"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, path: str = "") -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.path = status, kind, message, path

    def response(self) -> Response:
        body: dict[str, Any] = {"message": self.message}
        if self.kind == "ValidationException":
            body["fieldList"] = [{"path": self.path or "/", "message": self.message}]
        return aws_error(self.status, self.kind, body)


def _invalid(message: str, path: str = "") -> ApiError:
    return ApiError(400, "ValidationException", message, path)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)

# --- Mongo-style metadata filters, as S3 Vectors and Pinecone document them ---


def check_filter(flt: Any, path: str, non_filterable: set[str] | frozenset[str] = frozenset()
                 ) -> None:
    """Raise a 400 for a filter the service refuses."""
    if not isinstance(flt, dict) or not flt:
        raise _invalid("filter must be a non-empty object", path)
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise _invalid(f"{key} takes a non-empty array", path)
            for i, sub in enumerate(cond):
                check_filter(sub, f"{path}/{key}/{i}", non_filterable)
            continue
        if key.startswith("$"):
            raise _invalid(f"unknown operator {key}", path)
        if key in non_filterable:
            raise _invalid(f"metadata key {key} is not filterable", path)
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, value in ops.items():
            if op not in _OPS:
                raise _invalid(f"unknown operator {op}", path)
            if op in ("$gt", "$gte", "$lt", "$lte") and not _is_number(value):
                raise _invalid(f"{op} takes a number", path)
            if op in ("$in", "$nin") and not isinstance(value, list):
                raise _invalid(f"{op} takes an array", path)
            if op == "$exists" and not isinstance(value, bool):
                raise _invalid("$exists takes a boolean", path)


def filter_matches(flt: dict[str, Any], meta: dict[str, Any]) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            ok = all(filter_matches(f, meta) for f in cond)
        elif key == "$or":
            ok = any(filter_matches(f, meta) for f in cond)
        else:
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            ok = all(_test(op, value, key in meta, meta.get(key)) for op, value in ops.items())
        if not ok:
            return False
    return True


def _test(op: str, want: Any, present: bool, have: Any) -> bool:
    # An array attribute matches $eq/$in when any element does; $ne/$nin match a vector
    # without the key.
    items = have if isinstance(have, list) else [have]
    if op == "$exists":
        return present == want
    if op == "$eq":
        return present and any(_same(h, want) for h in items)
    if op == "$ne":
        return not present or not any(_same(h, want) for h in items)
    if op == "$in":
        return present and any(_same(h, w) for h in items for w in want)
    if op == "$nin":
        return not present or not any(_same(h, w) for h in items for w in want)
    if not present or not _is_number(have):
        return False
    return bool({"$gt": have > want, "$gte": have >= want,
                 "$lt": have < want, "$lte": have <= want}[op])


class _Index:
    def __init__(self, bucket: str, name: str, body: dict[str, Any]) -> None:
        self.bucket, self.name = bucket, name
        self.dimension = int(body["dimension"])
        self.metric = body["distanceMetric"]
        self.data_type = body["dataType"]
        config = body.get("metadataConfiguration") or {}
        self.non_filterable = set(config.get("nonFilterableMetadataKeys", []))
        self.created = time.time()
        self.vectors: dict[str, tuple[list[float], dict[str, Any]]] = {}

    def describe(self) -> dict[str, Any]:
        out = {
            "vectorBucketName": self.bucket, "indexName": self.name,
            "indexArn": f"arn:aws:s3vectors:us-east-1:123456789012:bucket/{self.bucket}"
                        f"/index/{self.name}",
            "creationTime": self.created, "dataType": self.data_type,
            "dimension": self.dimension, "distanceMetric": self.metric,
        }
        if self.non_filterable:
            out["metadataConfiguration"] = {
                "nonFilterableMetadataKeys": sorted(self.non_filterable)}
        return out

    def check_filter(self, flt: Any) -> None:
        check_filter(flt, "/filter", self.non_filterable)

    def matches(self, flt: dict[str, Any], meta: dict[str, Any]) -> bool:
        return filter_matches(flt, meta)

    def check_vector(self, data: Any, path: str) -> list[float]:
        values = (data or {}).get("float32")
        if not isinstance(values, list) or len(values) != self.dimension:
            raise _invalid(f"vector must have {self.dimension} float32 values", path)
        if not all(_is_number(v) and math.isfinite(v) for v in values):
            raise _invalid("vector values must be finite numbers", path)
        if self.metric == "cosine" and not any(values):
            raise _invalid("zero vectors are not allowed with the cosine metric", path)
        return [float(v) for v in values]

    def distance(self, a: list[float], b: list[float]) -> float:
        if self.metric == "euclidean":
            return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        na = math.sqrt(sum(x * x for x in a))
        nb = math.sqrt(sum(y * y for y in b))
        return 1.0 - dot / (na * nb)


class FakeS3Vectors:
    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, _Index]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (operation, body)
        self._lock = threading.Lock()
        self._server = ThreadedServer(
            Starlette(routes=[Route("/{op}", self._handle, methods=["POST"])]), "fake-s3vectors")
        self.url = self._server.url

    def __enter__(self) -> FakeS3Vectors:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    async def _handle(self, request: Request) -> Response:
        op = request.path_params["op"]
        auth = request.headers.get("authorization", "")
        if "AWS4-HMAC-SHA256" not in auth or "/s3vectors/aws4_request" not in auth:
            return aws_error(403, "AccessDeniedException", {"message": "not signed for s3vectors"})
        try:
            body = await request.json() if await request.body() else {}
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise _invalid(f"unknown operation {op}")
            with self._lock:
                self.calls.append((op, body))
                return JSONResponse(handler(body))
        except ApiError as exc:
            return exc.response()

    def _index(self, body: dict[str, Any]) -> _Index:
        bucket, name = body.get("vectorBucketName"), body.get("indexName")
        if bucket not in self.buckets:
            raise ApiError(404, "NotFoundException", f"vector bucket {bucket} not found")
        if name not in self.buckets[bucket]:
            raise ApiError(404, "NotFoundException", f"index {name} not found")
        return self.buckets[bucket][name]

    # --- operations ---

    def _op_CreateVectorBucket(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["vectorBucketName"]
        if not _NAME.match(name):
            raise _invalid("invalid vector bucket name", "/vectorBucketName")
        if name in self.buckets:
            raise ApiError(409, "ConflictException", f"vector bucket {name} exists")
        self.buckets[name] = {}
        return {"vectorBucketArn": f"arn:aws:s3vectors:us-east-1:123456789012:bucket/{name}"}

    def _op_CreateIndex(self, body: dict[str, Any]) -> dict[str, Any]:
        bucket, name = body.get("vectorBucketName"), body["indexName"]
        if bucket not in self.buckets:
            raise ApiError(404, "NotFoundException", f"vector bucket {bucket} not found")
        if not _NAME.match(name):
            raise _invalid("index names are 3-63 lowercase letters, digits, '-', '.'",
                           "/indexName")
        if body.get("dataType") != "float32" or body.get("distanceMetric") not in (
                "cosine", "euclidean"):
            raise _invalid("dataType float32; distanceMetric cosine or euclidean")
        if not 1 <= int(body.get("dimension", 0)) <= 4096:
            raise _invalid("dimension must be 1-4096", "/dimension")
        if name in self.buckets[bucket]:
            raise ApiError(409, "ConflictException", f"index {name} exists")
        index = _Index(bucket, name, body)
        self.buckets[bucket][name] = index
        return {"indexArn": index.describe()["indexArn"]}

    def _op_GetIndex(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"index": self._index(body).describe()}

    def _op_DeleteIndex(self, body: dict[str, Any]) -> dict[str, Any]:
        index = self._index(body)
        del self.buckets[index.bucket][index.name]
        return {}

    def _op_PutVectors(self, body: dict[str, Any]) -> dict[str, Any]:
        index = self._index(body)
        vectors = body.get("vectors") or []
        if not 1 <= len(vectors) <= 500:
            raise _invalid("PutVectors takes 1-500 vectors", "/vectors")
        checked = []
        for i, v in enumerate(vectors):
            data = index.check_vector(v.get("data"), f"/vectors/{i}/data")
            meta = v.get("metadata") or {}
            if not isinstance(meta, dict):
                raise _invalid("metadata must be an object", f"/vectors/{i}/metadata")
            checked.append((v["key"], data, meta))
        for key, data, meta in checked:  # all or nothing
            index.vectors[key] = (data, meta)
        return {}

    def _op_DeleteVectors(self, body: dict[str, Any]) -> dict[str, Any]:
        index = self._index(body)
        keys = body.get("keys") or []
        if not 1 <= len(keys) <= 500:
            raise _invalid("DeleteVectors takes 1-500 keys", "/keys")
        for key in keys:
            index.vectors.pop(key, None)
        return {}

    def _op_GetVectors(self, body: dict[str, Any]) -> dict[str, Any]:
        index = self._index(body)
        out = []
        for key in body.get("keys") or []:
            if key in index.vectors:
                data, meta = index.vectors[key]
                item: dict[str, Any] = {"key": key}
                if body.get("returnData"):
                    item["data"] = {"float32": data}
                if body.get("returnMetadata"):
                    item["metadata"] = meta
                out.append(item)
        return {"vectors": out}

    def _op_ListVectors(self, body: dict[str, Any]) -> dict[str, Any]:
        index = self._index(body)
        size = int(body.get("maxResults") or 500)
        keys = sorted(index.vectors)
        start = int(body.get("nextToken") or 0)
        out = []
        for key in keys[start : start + size]:
            data, meta = index.vectors[key]
            item: dict[str, Any] = {"key": key}
            if body.get("returnData"):
                item["data"] = {"float32": data}
            if body.get("returnMetadata"):
                item["metadata"] = meta
            out.append(item)
        reply: dict[str, Any] = {"vectors": out}
        if start + size < len(keys):
            reply["nextToken"] = str(start + size)
        return reply

    def _op_QueryVectors(self, body: dict[str, Any]) -> dict[str, Any]:
        index = self._index(body)
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= 100:
            raise _invalid("topK must be 1-100", "/topK")
        query = index.check_vector(body.get("queryVector"), "/queryVector")
        flt = body.get("filter")
        if flt is not None:
            index.check_filter(flt)
        scored = sorted(
            (index.distance(query, data), key, meta)
            for key, (data, meta) in index.vectors.items()
            if flt is None or index.matches(flt, meta)
        )[:top_k]
        out = []
        for dist, key, meta in scored:
            item: dict[str, Any] = {"key": key}
            if body.get("returnDistance"):
                item["distance"] = dist
            if body.get("returnMetadata"):
                item["metadata"] = meta
            out.append(item)
        return {"vectors": out, "distanceMetric": index.metric}
