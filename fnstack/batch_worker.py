"""One run of a batch job, and batches started by a file dropped under inbox/.

`BatchRun` is what the ``batches.run`` job does (see fnstack/services/batches.py for
the checkpoint protocol): validate the input once, run chunk after chunk, checkpoint
after each, stop for cancel, expiry or the run's time budget, and finalize.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fnstack.api.batches import CreateBatchRequest
from fnstack.errors import FnstackError, NotFoundError, PreconditionFailedError
from fnstack.storage import BlobStore, Owner, open_blob

if TYPE_CHECKING:
    from fnstack.services.batches import BatchesService

__all__ = ["BatchRun", "parse_input", "start_inbox_batch"]

log = logging.getLogger("fnstack.batches")

MAX_ERRORS = 1000
LEASE_S = 300.0
# A line failing with a 5xx is retried this often before it goes to the error file; a
# 429 is retried for as long as the run's budget lasts (the job slows, the line waits).
MAX_5XX_TRIES = 3


@dataclass
class Line:
    number: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class Parsed:
    lines: list[Line] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def parse_input(data: bytes, endpoint: str, max_lines: int) -> Parsed:
    """The request lines of a batch input file, or what is wrong with it (line numbers
    are 1-based, as an editor shows them)."""
    out = Parsed()
    seen: set[str] = set()

    def bad(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(out.errors) < MAX_ERRORS:
            out.errors.append({"code": code, "message": message, "param": param, "line": line})

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        bad("invalid_file", "the input file is not UTF-8 text", None)
        return out
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            bad("invalid_json_line", f"line {number} is not valid JSON: {exc.msg}", number)
            continue
        if not isinstance(item, dict):
            bad("invalid_json_line", f"line {number} is not a JSON object", number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            bad("missing_required_parameter",
                f"line {number} has no custom_id (a non-empty string)", number, "custom_id")
            continue
        if custom_id in seen:
            bad("duplicate_custom_id",
                f"line {number} repeats custom_id {custom_id!r}; each must be unique",
                number, "custom_id")
            continue
        seen.add(custom_id)
        if str(item.get("method", "POST")).upper() != "POST":
            bad("invalid_method", f"line {number}: method must be POST", number, "method")
            continue
        if item.get("url") != endpoint:
            bad("invalid_url", f"line {number}: url {item.get('url')!r} does not match the "
                f"batch's endpoint {endpoint!r}", number, "url")
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            bad("invalid_request", f"line {number}: body must be a JSON object", number, "body")
            continue
        if not isinstance(body.get("model"), str):
            bad("missing_required_parameter", f"line {number}: body.model is required",
                number, "body.model")
            continue
        out.lines.append(Line(number, custom_id, body))
    if not out.lines and not out.errors:
        bad("empty_file", "the input file holds no request lines", None)
    if len(out.lines) > max_lines:
        bad("too_many_tasks", f"the input file holds {len(out.lines)} requests; a batch "
            f"takes at most {max_lines}", None)
    return out


class _OutOfTime(Exception):
    """The run's budget ended while a line still waited out a 429: leave the chunk."""


class BatchRun:
    def __init__(self, svc: BatchesService, batch_id: str) -> None:
        self.svc = svc
        self.batch_id = batch_id
        self.owner = Owner()
        self.started = time.monotonic()
        self.deadline = self.started + svc.limits.run_budget_s
        self._pause_until = 0.0

    # --- the run -------------------------------------------------------------------------

    async def run(self, *, reclaim: bool = False) -> None:
        rec = await self.svc.claim(self.batch_id, reclaim=reclaim)
        if rec is None:
            return  # finished, cancelled, deleted or never there
        self.owner = rec.owner
        try:
            await self._run(rec.value)
        except Exception:
            # The job's retry (or SQS's redelivery) resumes from the last checkpoint at
            # once, instead of waiting out this run's lease. A dead process cannot do
            # this: its lease expires (SQS) or the restarted server reclaims (local).
            with contextlib.suppress(Exception):
                await self.svc._mutate(self.batch_id, lambda v: {**v, "lease_until": 0})
            raise

    async def _run(self, value: dict[str, Any]) -> None:
        status = value["status"]
        if status == "cancelling":
            await self._finish(value, "cancelled")
            return
        if status == "finalizing":
            await self._finish(value, "completed")
            return
        if time.time() >= value["expires_at"]:
            await self._finish(value, "expired")
            return
        parsed = await self._parse(value)
        if status == "validating":
            errors = parsed.errors or await self._unknown_models(parsed)
            if errors:
                await self._fail(errors)
                return
            updated = await self.svc._mutate(self.batch_id, lambda v: {
                **v, "status": "in_progress", "in_progress_at": int(time.time()),
                "request_counts": {"total": len(parsed.lines), "completed": 0, "failed": 0},
            } if v["status"] == "validating" else None)
            if updated is None:
                await self.run(reclaim=True)  # cancelled meanwhile: finish that way
                return
            value = updated
        await self._chunks(value, parsed.lines)

    async def _chunks(self, value: dict[str, Any], lines: list[Line]) -> None:
        size = self.svc.limits.chunk_lines
        count = (len(lines) + size - 1) // size
        k = int(value.get("done_chunks") or 0)
        while k < count:
            if time.monotonic() >= self.deadline:
                await self._requeue()
                return
            current = await self.svc.kv.get(f"batch:{self.batch_id}")
            if current is None:
                return
            if current.value["status"] == "cancelling":
                await self._finish(current.value, "cancelled")
                return
            if time.time() >= current.value["expires_at"]:
                await self._finish(current.value, "expired")
                return
            try:
                out, err = await self._chunk(lines[k * size:(k + 1) * size])
            except _OutOfTime:
                await self._requeue()
                return
            part = {"out": out, "err": err}
            await self.svc.parts.put(_part_key(self.batch_id, k),
                                     json.dumps(part).encode(), content_type="application/json")
            if await self.svc._mutate(self.batch_id, _checkpoint(k, len(out), len(err))) is None:
                # Cancelled between the chunk and its checkpoint: the chunk's part stays
                # out of the output (it is not counted); finish the batch that way.
                again = await self.svc.kv.get(f"batch:{self.batch_id}")
                if again is not None and again.value["status"] == "cancelling":
                    await self._finish(again.value, "cancelled")
                return
            k += 1
        final = await self.svc._mutate(self.batch_id, lambda v: {
            **v, "status": "finalizing", "finalizing_at": int(time.time()),
        } if v["status"] == "in_progress" else None)
        if final is not None:
            await self._finish(final, "completed")
        else:
            await self.run(reclaim=True)

    async def _requeue(self) -> None:
        await self.svc._mutate(self.batch_id, lambda v: {**v, "lease_until": 0})
        await self.svc._submit(self.batch_id)
        log.info("batch run budget spent; the rest re-enqueued",
                 extra={"batch_id": self.batch_id})

    # --- lines ---------------------------------------------------------------------------

    async def _chunk(self, lines: list[Line]) -> tuple[list[str], list[str]]:
        gate = asyncio.Semaphore(self.svc.limits.concurrency)
        endpoint = ""
        rec = await self.svc.kv.get(f"batch:{self.batch_id}")
        if rec is not None:
            endpoint = rec.value["endpoint"]

        async def one(line: Line) -> tuple[bool, str]:
            async with gate:
                return await self._line(endpoint, line)

        results = await asyncio.gather(*(one(line) for line in lines))
        return ([text for ok, text in results if ok], [text for ok, text in results if not ok])

    async def _line(self, endpoint: str, line: Line) -> tuple[bool, str]:
        from fnstack.services.batches import dumps, request_id, retryable

        rid = request_id(self.batch_id, line.custom_id)
        delay, server_errors = 0.5, 0
        while True:
            wait = self._pause_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                result = await self.svc.call(endpoint, line.body, self.owner)
            except FnstackError as exc:
                if exc.status >= 500 and exc.status != 503:
                    server_errors += 1
                if retryable(exc) and server_errors < MAX_5XX_TRIES:
                    # Everyone waits: a 429 means the upstream wants fewer requests.
                    after = _retry_after(exc) or delay
                    if time.monotonic() + after > self.deadline:
                        raise _OutOfTime from None
                    self._pause_until = max(self._pause_until, time.monotonic() + after)
                    delay = min(delay * 2, 16.0)
                    continue
                return False, dumps({"id": rid, "custom_id": line.custom_id, "response": {
                    "status_code": exc.status, "request_id": rid, "body": exc.to_dict()},
                    "error": None})
            except Exception:
                log.exception("batch line failed", extra={"batch_id": self.batch_id,
                                                           "custom_id": line.custom_id})
                return False, dumps({"id": rid, "custom_id": line.custom_id, "response": {
                    "status_code": 500, "request_id": rid, "body": {"error": {
                        "message": "the request failed inside the server", "type":
                        "server_error", "param": None, "code": "server_error"}}},
                    "error": None})
            return True, dumps({"id": rid, "custom_id": line.custom_id, "response": {
                "status_code": 200, "request_id": rid,
                "body": result.model_dump(mode="json", exclude_none=True)}, "error": None})

    # --- input ---------------------------------------------------------------------------

    async def _parse(self, value: dict[str, Any]) -> Parsed:
        try:
            content = await self.svc.files.content(value["input_file_id"], self.owner)
            data = b"".join([c async for c in content.chunks])
        except NotFoundError:
            return Parsed(errors=[{"code": "invalid_file", "line": None, "param": None,
                                   "message": f"input file {value['input_file_id']!r} no "
                                   "longer exists"}])
        return parse_input(data, value["endpoint"], self.svc.limits.max_lines)

    async def _unknown_models(self, parsed: Parsed) -> list[dict[str, Any]]:
        first: dict[str, int] = {}
        for line in parsed.lines:
            first.setdefault(str(line.body["model"]), line.number)
        errors: list[dict[str, Any]] = []
        for model, number in first.items():
            try:
                await self.svc.models.resolve(model, self.owner)
            except NotFoundError:
                errors.append({"code": "model_not_found", "param": "body.model", "line": number,
                               "message": f"line {number}: model {model!r} not found; see "
                               "GET /v1/models"})
        return errors

    async def _fail(self, errors: list[dict[str, Any]]) -> None:
        now = int(time.time())
        value = await self.svc._mutate(self.batch_id, lambda v: {
            **v, "status": "failed", "failed_at": now, "lease_until": 0,
            "errors": {"object": "list", "data": errors},
        } if v["status"] == "validating" else None)
        if value is not None and value.get("inbox"):
            await _inbox_write(self.svc, value, "errors", "".join(
                json.dumps(e) + "\n" for e in errors).encode())

    # --- the end -------------------------------------------------------------------------

    async def _finish(self, value: dict[str, Any], status: str) -> None:
        from fnstack.services.batches import dumps, request_id

        done = int(value.get("done_chunks") or 0)
        out: list[str] = []
        err: list[str] = []
        for k in range(done):
            part = json.loads(await self.svc.parts.get(_part_key(self.batch_id, k)))
            out += part["out"]
            err += part["err"]
        expired = 0
        if status == "expired" and value.get("in_progress_at"):
            size = self.svc.limits.chunk_lines
            for line in (await self._parse(value)).lines[done * size:]:
                rid = request_id(self.batch_id, line.custom_id)
                err.append(dumps({"id": rid, "custom_id": line.custom_id, "response": None,
                                  "error": {"code": "batch_expired", "message":
                                            "this request could not be executed before the "
                                            "completion window expired"}}))
                expired += 1
        for kind, lines in (("output", out), ("error", err)):
            field_name = f"{kind}_file_id"
            if not lines or value.get(field_name):
                continue
            data = ("\n".join(lines) + "\n").encode()
            file = await self.svc.files.create_output(
                self.owner, filename=f"{self.batch_id}_{kind}.jsonl",
                purpose="batch_output", data=data)
            # Checkpointed at once: a redone finalization reuses the file.
            updated = await self.svc._mutate(self.batch_id, _setter(field_name, file.id))
            if updated is not None:
                value = updated
            if value.get("inbox"):
                await _inbox_write(self.svc, value, "output" if kind == "output" else "errors",
                                   data)
        now = int(time.time())

        def final(v: dict[str, Any]) -> dict[str, Any] | None:
            if v["status"] not in ("in_progress", "finalizing", "cancelling", "validating"):
                return None
            counts = dict(v["request_counts"])
            counts["failed"] += expired
            return {**v, "status": status, f"{status}_at": now, "lease_until": 0,
                    "request_counts": counts}

        await self.svc._mutate(self.batch_id, final)
        for k in range(done):
            try:
                await self.svc.parts.delete(_part_key(self.batch_id, k))
            except FnstackError:
                log.warning("a batch part was left behind", extra={"batch_id": self.batch_id})


def _checkpoint(k: int, completed: int, failed: int
                ) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """Chunk ``k`` is done: count its lines, renew the lease (only if it is next)."""

    def change(v: dict[str, Any]) -> dict[str, Any] | None:
        if v["status"] != "in_progress" or int(v.get("done_chunks") or 0) != k:
            return None
        counts = dict(v["request_counts"])
        counts["completed"] += completed
        counts["failed"] += failed
        return {**v, "done_chunks": k + 1, "request_counts": counts,
                "lease_until": time.time() + LEASE_S}

    return change


def _setter(name: str, file_id: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    return lambda v: {**v, name: file_id}


def _part_key(batch_id: str, k: int) -> str:
    return f"batch_parts/{batch_id}/{k:06d}"


def _retry_after(exc: FnstackError) -> float | None:
    value = exc.headers.get("retry-after") or exc.headers.get("Retry-After")
    try:
        return min(float(value), 30.0) if value else None
    except ValueError:
        return None


# --- inbox/ ----------------------------------------------------------------------------

INBOX_PREFIX = "inbox/"
_OUTPUT_SUFFIXES = (".output.jsonl", ".errors.jsonl")


def _inbox_store(svc: BatchesService, bucket: str) -> BlobStore | None:
    """The bucket as a blob store without prefix: the files store's backend, when that
    backend is this bucket (or, locally, the folder that stands for it)."""
    storage = svc._config.storage
    ref = storage.stores.get("files")
    backend = storage.backends.get(ref.backend) if ref is not None else None
    if backend is None:
        return None
    if backend.type == "blob_s3" and getattr(backend, "bucket", None) != bucket:
        return None
    return open_blob(backend, "")


async def _inbox_write(svc: BatchesService, value: dict[str, Any], kind: str,
                       data: bytes) -> None:
    inbox = value["inbox"]
    store = _inbox_store(svc, inbox["bucket"])
    if store is None:
        return
    base = inbox["key"].removesuffix(".jsonl")
    await store.put(f"{base}.{kind}.jsonl", data, content_type="application/jsonl")


async def start_inbox_batch(svc: BatchesService, bucket: str, key: str) -> str | None:
    """A batch for the JSONL file at ``key`` (under inbox/): its id, or None when the key
    is not an input (an output written beside one, another prefix) or already started."""
    if not key.startswith(INBOX_PREFIX) or not key.endswith(".jsonl") or key.endswith(
            _OUTPUT_SUFFIXES):
        return None
    store = _inbox_store(svc, bucket)
    if store is None:
        log.warning("inbox object of an unknown bucket skipped",
                    extra={"bucket": bucket, "key": key})
        return None
    try:
        info = await store.head(key)
        data = await store.get(key)
    except NotFoundError:
        return None
    # S3 may notify twice: one batch per object version (key, size, etag).
    marker = hashlib.sha256(f"{bucket}\0{key}\0{info.size}\0{info.etag}".encode()).hexdigest()
    try:
        await svc.kv.put(f"inbox:{marker}", {"key": key, "batch_id": None},
                         owner=_owner(), if_absent=True)
    except PreconditionFailedError:
        existing = await svc.kv.get(f"inbox:{marker}")
        if existing is not None and existing.value.get("batch_id"):
            return str(existing.value["batch_id"])
    endpoint = "/v1/chat/completions"
    for raw in data.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            endpoint = item["url"]
            break
    owner = _owner()
    file = await svc.files.create_output(owner, filename=key.rsplit("/", 1)[-1],
                                         purpose="batch", data=data)
    batch = await svc.create(
        CreateBatchRequest(input_file_id=file.id, endpoint=endpoint,
                           metadata={"inbox_key": key[:512]}),
        owner, extra={"inbox": {"bucket": bucket, "key": key}})
    await svc.kv.put(f"inbox:{marker}", {"key": key, "batch_id": batch.id}, owner=owner)
    log.info("inbox batch started", extra={"key": key, "batch_id": batch.id})
    return batch.id


def _owner() -> Owner:
    from fnstack.services.batches import INBOX_OWNER

    return INBOX_OWNER
