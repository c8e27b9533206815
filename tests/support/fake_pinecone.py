"""A fake Pinecone index host speaking Pinecone's data-plane REST wire format.

One serverless dense index (its dimension and metric fixed at construction) with
namespaces, as the ``pinecone`` SDK's HTTP clients call it (``Api-Key`` header
required; JSON bodies in camelCase):

- ``POST /vectors/upsert`` ``{vectors: [{id, values, metadata}], namespace}`` ->
  ``{upsertedCount}``; a dense vector needs a non-zero value; metadata values are
  strings, numbers, booleans or lists of strings;
- ``POST /query`` ``{topK (1-10000), vector, namespace, filter, includeMetadata,
  includeValues}`` -> ``{matches: [{id, score, values, metadata}], namespace, usage}``,
  exact (a fake needs no ANN), cosine similarity as the score;
- ``GET /vectors/fetch?ids=..&namespace=..`` -> ``{vectors: {id: {...}}, namespace, usage}``;
- ``POST /vectors/delete`` ``{ids | deleteAll | filter, namespace}`` -> ``{}``;
- ``POST /describe_index_stats`` -> ``{namespaces: {ns: {vectorCount}}, dimension,
  indexFullness, totalVectorCount, metric, vectorType}``;
- ``DELETE /namespaces/{ns}`` -> 202 ``{}``, 404 when absent.

Filters use the operators Pinecone documents (the same Mongo-style grammar as S3
Vectors: see `fake_s3vectors.check_filter`). Errors are ``{"code": N, "message": ...,
"details": []}`` with the HTTP status, as Pinecone's data plane sends them.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.eventstream import ThreadedServer
from tests.support.fake_s3vectors import ApiError, check_filter, filter_matches

__all__ = ["API_KEY", "FakePinecone"]

API_KEY = "pcsk_fake_test_key"
_GRPC_CODE = {400: 3, 401: 16, 404: 5, 409: 6, 429: 8, 500: 13}


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class FakePinecone:
    def __init__(self, dimension: int = 8, metric: str = "cosine") -> None:
        self.dimension, self.metric = dimension, metric
        self.namespaces: dict[str, dict[str, tuple[list[float], dict[str, Any]]]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        routes = [
            Route("/vectors/upsert", self._wrap(self._upsert), methods=["POST"]),
            Route("/query", self._wrap(self._query), methods=["POST"]),
            Route("/vectors/fetch", self._wrap(self._fetch), methods=["GET"]),
            Route("/vectors/delete", self._wrap(self._delete), methods=["POST"]),
            Route("/describe_index_stats", self._wrap(self._stats), methods=["POST", "GET"]),
            Route("/namespaces/{ns}", self._wrap(self._delete_namespace), methods=["DELETE"]),
        ]
        self._server = ThreadedServer(Starlette(routes=routes), "fake-pinecone")
        self.url = self._server.url

    def __enter__(self) -> FakePinecone:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if request.headers.get("api-key") != API_KEY:
                return self._error(ApiError(401, "UNAUTHENTICATED", "Invalid API key"))
            try:
                raw = await request.body()
                body: dict[str, Any] = await request.json() if raw else {}
                with self._lock:
                    self.calls.append((request.url.path, body))
                    status, reply = handler(body, request)
                return JSONResponse(reply, status_code=status)
            except ApiError as exc:
                return self._error(exc)

        return endpoint

    @staticmethod
    def _error(exc: ApiError) -> Response:
        body = {"code": _GRPC_CODE.get(exc.status, 2), "message": exc.message, "details": []}
        return JSONResponse(body, status_code=exc.status)

    def _values(self, values: Any, what: str) -> list[float]:
        if not isinstance(values, list) or len(values) != self.dimension:
            raise _bad(f"{what}: Vector dimension {len(values or [])} does not match the "
                       f"dimension of the index {self.dimension}")
        if not all(_is_number(v) and math.isfinite(v) for v in values):
            raise _bad(f"{what}: values must be finite numbers")
        if not any(values):
            raise _bad(f"{what}: Dense vectors must contain at least one non-zero value")
        return [float(v) for v in values]

    def _upsert(self, body: dict[str, Any], request: Request) -> tuple[int, dict[str, Any]]:
        vectors = body.get("vectors") or []
        if not 1 <= len(vectors) <= 1000:
            raise _bad("upsert takes 1-1000 vectors")
        checked = []
        for v in vectors:
            values = self._values(v.get("values"), f"vector {v.get('id')}")
            meta = v.get("metadata") or {}
            for key, value in meta.items():
                ok = isinstance(value, str | bool) or _is_number(value) or (
                    isinstance(value, list) and all(isinstance(x, str) for x in value))
                if not ok:
                    raise _bad(f"Metadata value for field {key} must be a string, number, "
                               "boolean or list of strings")
            checked.append((str(v["id"]), values, meta))
        ns = self.namespaces.setdefault(body.get("namespace", ""), {})
        for vid, values, meta in checked:
            ns[vid] = (values, meta)
        return 200, {"upsertedCount": len(checked)}

    def _score(self, a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        if self.metric == "dotproduct":
            return dot
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    def _query(self, body: dict[str, Any], request: Request) -> tuple[int, dict[str, Any]]:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= 10000:
            raise _bad("topK must be 1-10000")
        query = self._values(body.get("vector"), "query vector")
        flt = body.get("filter")
        if flt is not None:
            check_filter(flt, "filter")
        namespace = body.get("namespace", "")
        ns = self.namespaces.get(namespace, {})
        scored = sorted(
            ((self._score(query, values), vid, values, meta)
             for vid, (values, meta) in ns.items()
             if flt is None or filter_matches(flt, meta)),
            key=lambda t: (-t[0], t[1]),
        )[:top_k]
        matches = []
        for score, vid, values, meta in scored:
            match: dict[str, Any] = {"id": vid, "score": score,
                                     "values": values if body.get("includeValues") else []}
            if body.get("includeMetadata"):
                match["metadata"] = meta
            matches.append(match)
        return 200, {"matches": matches, "namespace": namespace, "usage": {"readUnits": 1}}

    def _fetch(self, body: dict[str, Any], request: Request) -> tuple[int, dict[str, Any]]:
        namespace = request.query_params.get("namespace", "")
        ns = self.namespaces.get(namespace, {})
        out = {vid: {"id": vid, "values": ns[vid][0], "metadata": ns[vid][1]}
               for vid in request.query_params.getlist("ids") if vid in ns}
        return 200, {"vectors": out, "namespace": namespace, "usage": {"readUnits": 1}}

    def _delete(self, body: dict[str, Any], request: Request) -> tuple[int, dict[str, Any]]:
        namespace = body.get("namespace", "")
        selectors = [k for k in ("ids", "deleteAll", "filter") if body.get(k)]
        if len(selectors) != 1:
            raise _bad("delete takes exactly one of ids, deleteAll, filter")
        if namespace not in self.namespaces:
            raise ApiError(404, "NOT_FOUND", "Namespace not found")
        ns = self.namespaces[namespace]
        if body.get("deleteAll"):
            ns.clear()
        elif body.get("ids"):
            for vid in body["ids"]:
                ns.pop(vid, None)
        else:
            check_filter(body["filter"], "filter")
            for vid in [v for v, (_, meta) in ns.items() if filter_matches(body["filter"], meta)]:
                del ns[vid]
        return 200, {}

    def _stats(self, body: dict[str, Any], request: Request) -> tuple[int, dict[str, Any]]:
        counts = {name: {"vectorCount": len(ns)} for name, ns in self.namespaces.items() if ns}
        return 200, {
            "namespaces": counts, "dimension": self.dimension, "indexFullness": 0.0,
            "totalVectorCount": sum(c["vectorCount"] for c in counts.values()),
            "metric": self.metric, "vectorType": "dense",
        }

    def _delete_namespace(self, body: dict[str, Any],
                          request: Request) -> tuple[int, dict[str, Any]]:
        name = request.path_params["ns"]
        if name not in self.namespaces:
            raise ApiError(404, "NOT_FOUND", f"Namespace {name} not found")
        del self.namespaces[name]
        return 202, {}
