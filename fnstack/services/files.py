"""Files and uploads: content in the blob store, metadata in owned records.

A file is one blob (key: its id) and one record (kind ``file``). Its bytes stream from
the request into the blob store, counted against the configured limit as they pass,
so no request holds a file in memory. An Upload (kind ``upload``) collects parts, one
request and one blob each (``uploads/<upload id>/<part id>``); completing it streams
the named parts, in the order given, into the file's blob, checks the declared size
(and md5), creates the file and drops the parts::

    POST /v1/uploads ............ record {status: pending, expires_at: now + ttl}
    POST /v1/uploads/u/parts .... blob uploads/u/part_1, uploads/u/part_2, ...
    POST /v1/uploads/u/complete . parts -> blob file-x (a stream) -> record file-x
                                  upload: pending -> completed (conditional write;
                                  the loser of two completes removes its file)
    POST /v1/uploads/u/cancel ... upload: -> cancelled, parts deleted

Expiry is checked on every read: an expired file answers 404 and its record and blob
are removed then; an expired upload reads as ``expired`` and its parts are removed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.files import (
    PURPOSES,
    CompleteUploadRequest,
    CreateUploadRequest,
    ExpiresAfter,
    FileContent,
    FileDeleted,
    FileList,
    FileObject,
    Upload,
    UploadPart,
)
from fnstack.config import FilesConfig
from fnstack.errors import (
    ConfigError,
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from fnstack.records import RecordStore, authorize, check_storable, new_id
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.spec import Api
from fnstack.storage import BlobStore, KVRecord, Owner

__all__ = ["FilesService", "spec"]

log = logging.getLogger("fnstack.files")

RECORDS_STORE = "file_records"
BLOB_STORE = "files"
MAX_LIST_LIMIT = 1000
# OpenAI keeps batch files 30 days unless told otherwise; the others until deleted.
BATCH_EXPIRY_S = 30 * 24 * 3600
# How long a redirect to a file's content stays valid.
REDIRECT_TTL_S = 300
_PART_ID = re.compile(r"^part_[0-9a-f]{28}$")


def _now() -> int:
    return int(time.time())


class FilesService(Service):
    def __init__(self, files: RecordStore, uploads: RecordStore, blobs: BlobStore,
                 limits: FilesConfig) -> None:
        self.files = files
        self.uploads = uploads
        self.blobs = blobs
        self.limits = limits

    # --- files -------------------------------------------------------------------------

    async def create(
        self,
        user: Owner,
        *,
        filename: str,
        content_type: str,
        purpose: str,
        data: AsyncIterator[bytes],
        expires_after: ExpiresAfter | None = None,
        declared_bytes: int | None = None,
    ) -> FileObject:
        """Store a file sent in one request (up to ``files.max_file_bytes``)."""
        _check_purpose(purpose)
        limit = self.limits.max_file_bytes
        if declared_bytes is not None and declared_bytes > limit:
            raise _too_large("file", declared_bytes, limit, "files.max_file_bytes",
                             "send larger files through the Uploads API (/v1/uploads)")
        file_id = self.files.new_id()
        authorize(self.files.policy, "create", self.files.kind, file_id, user, user)
        stream = _limited(data, limit, "file", "files.max_file_bytes",
                          "send larger files through the Uploads API (/v1/uploads)")
        size = await self._put(file_id, stream, content_type, "file")
        return await self._record(file_id, user, size=size, filename=filename,
                                  purpose=purpose, content_type=content_type,
                                  expires_after=expires_after)

    async def create_output(self, user: Owner, *, filename: str, purpose: str, data: bytes,
                            content_type: str = "application/jsonl") -> FileObject:
        """A file the platform writes for ``user`` (a batch's output or errors): the
        ``*_output`` purposes clients may not upload with, no upload limit."""
        file_id = self.files.new_id()
        authorize(self.files.policy, "create", self.files.kind, file_id, user, user)

        async def body() -> AsyncIterator[bytes]:
            yield data

        size = await self._put(file_id, body(), content_type, "file")
        return await self._record(file_id, user, size=size, filename=filename,
                                  purpose=purpose, content_type=content_type,
                                  expires_after=None)

    async def _put(self, key: str, stream: AsyncIterator[bytes], content_type: str,
                   param: str) -> int:
        """Stream into blob ``key``; 400 for an empty body (nothing is written then)."""
        first = b""
        async for chunk in stream:
            if chunk:
                first = chunk
                break
        if not first:
            raise InvalidRequestError(f"the {param} is empty; send at least one byte",
                                      param=param, code="empty_file")

        async def whole() -> AsyncIterator[bytes]:
            yield first
            async for chunk in stream:
                yield chunk

        info = await self.blobs.put(key, whole(), content_type=content_type)
        return info.size

    async def _record(self, file_id: str, user: Owner, *, size: int, filename: str,
                      purpose: str, content_type: str,
                      expires_after: ExpiresAfter | None) -> FileObject:
        created = _now()
        seconds = expires_after.seconds if expires_after else (
            BATCH_EXPIRY_S if purpose == "batch" else None)
        file = FileObject(id=file_id, bytes=size, created_at=created,
                          expires_at=created + seconds if seconds else None,
                          filename=filename, purpose=purpose)
        value = file.model_dump(mode="json")
        value["content_type"] = content_type
        try:
            check_storable(value, "file")
            await self.files.create(file_id, value, user)
        except BaseException:
            await self._drop_blob(file_id)
            raise
        return file

    async def list(
        self,
        user: Owner,
        *,
        after: str | None = None,
        limit: int = 10_000,
        order: Literal["asc", "desc"] = "desc",
        purpose: str | None = None,
    ) -> FileList:
        # OpenAI accepts up to 10,000 per page; pages here hold at most 1,000 and say
        # has_more, which the SDKs' auto-pagination follows.
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError("limit must be between 1 and 10000", param="limit")
        now = time.time()
        expired: list[str] = []

        def where(value: dict[str, Any]) -> bool:
            if _expired(value, now):
                expired.append(value["id"])
                return False
            return purpose is None or value.get("purpose") == purpose

        page = await self.files.list(user, after=after, limit=min(limit, MAX_LIST_LIMIT),
                                     order=order, where=where)
        for file_id in expired:
            await self._forget(file_id)
        data = [_file(r.value) for r in page.records]
        return FileList(data=data, first_id=data[0].id if data else None,
                        last_id=data[-1].id if data else None, has_more=page.has_more)

    async def _get(self, file_id: str, user: Owner) -> KVRecord:
        try:
            rec = await self.files.get(file_id, user)
        except NotFoundError:
            raise _no_file(file_id) from None
        if _expired(rec.value, time.time()):
            await self._forget(file_id)
            raise _no_file(file_id)
        return rec

    async def get(self, file_id: str, user: Owner) -> FileObject:
        return _file((await self._get(file_id, user)).value)

    async def content(self, file_id: str, user: Owner) -> FileContent:
        rec = await self._get(file_id, user)
        try:
            chunks = await self.blobs.stream(file_id)
        except NotFoundError:
            raise _no_file(file_id) from None
        return FileContent(_file(rec.value), _content_type(rec.value), chunks)

    async def content_url(self, file_id: str, user: Owner) -> str | None:
        """A presigned URL for content past ``files.redirect_content_bytes`` (AWS: more
        than a function may answer), where the blob store has such URLs; else None."""
        threshold = self.limits.redirect_content_bytes
        if threshold is None:
            return None
        rec = await self._get(file_id, user)
        file = _file(rec.value)
        if file.bytes <= threshold:
            return None
        return await self.blobs.download_url(file_id, expires_s=REDIRECT_TTL_S,
                                             content_type=_content_type(rec.value),
                                             filename=file.filename)

    async def delete(self, file_id: str, user: Owner) -> FileDeleted:
        await self._get(file_id, user)
        try:
            await self.files.delete(file_id, user)
        except NotFoundError:
            raise _no_file(file_id) from None
        await self._drop_blob(file_id)
        return FileDeleted(id=file_id)

    async def _forget(self, file_id: str) -> None:
        """Remove an expired file: its record, then its blob (whoever asked)."""
        try:
            await self.files.store.delete(self.files.key_prefix + file_id)
        except FnstackError:
            log.warning("removing an expired file record failed", extra={"file_id": file_id})
            return
        await self._drop_blob(file_id)

    async def _drop_blob(self, key: str) -> None:
        try:
            await self.blobs.delete(key)
        except FnstackError:
            # The record is what makes a file visible; an orphan blob is only storage.
            log.warning("deleting a blob failed", extra={"key": key}, exc_info=True)

    # --- uploads -----------------------------------------------------------------------

    async def create_upload(self, request: CreateUploadRequest, user: Owner) -> Upload:
        if request.bytes > self.limits.max_upload_bytes:
            raise _too_large("upload", request.bytes, self.limits.max_upload_bytes,
                             "files.max_upload_bytes", "")
        upload_id = self.uploads.new_id()
        created = _now()
        upload = Upload(id=upload_id, bytes=request.bytes, created_at=created,
                        expires_at=created + self.limits.upload_ttl_s,
                        filename=request.filename, purpose=request.purpose, status="pending")
        value = upload.model_dump(mode="json", exclude_none=True)
        value["mime_type"] = request.mime_type
        if request.expires_after is not None:
            value["file_expires_after"] = request.expires_after.model_dump()
        check_storable(value, "upload")
        await self.uploads.create(upload_id, value, user)
        return upload

    async def pending_upload(self, upload_id: str, user: Owner) -> None:
        """404 unless the caller's upload exists; 400 unless it still takes parts."""
        await self._upload(upload_id, user, "add a part to")

    async def _upload(self, upload_id: str, user: Owner, action: str) -> KVRecord:
        """The caller's upload, still pending, which it may update."""
        try:
            rec = await self.uploads.get(upload_id, user)
        except NotFoundError:
            raise _no_upload(upload_id) from None
        authorize(self.uploads.policy, "update", self.uploads.kind, upload_id, rec.owner, user)
        status = rec.value["status"]
        if status == "pending" and rec.value["expires_at"] <= time.time():
            await self._expire(upload_id, user)
            status = "expired"
        if status != "pending":
            raise InvalidRequestError(
                f"cannot {action} upload {upload_id!r}: it is {status}"
                + ("; create a new upload" if status != "completed" else ""),
                param="upload_id", code=f"upload_{status}",
            )
        return rec

    async def _expire(self, upload_id: str, user: Owner) -> None:
        def mark(value: dict[str, Any]) -> dict[str, Any]:
            if value["status"] == "pending":
                value["status"] = "expired"
            return value

        try:
            await self.uploads.update(upload_id, user, mark)
        except FnstackError:
            log.warning("marking an upload expired failed", extra={"upload_id": upload_id})
        await self._drop_parts(upload_id)

    def _part_key(self, upload_id: str, part_id: str) -> str:
        return f"uploads/{upload_id}/{part_id}"

    async def add_part(self, upload_id: str, user: Owner, data: AsyncIterator[bytes],
                       declared_bytes: int | None = None) -> UploadPart:
        rec = await self._upload(upload_id, user, "add a part to")
        limit = min(self.limits.max_part_bytes, int(rec.value["bytes"]))
        what = ("files.max_part_bytes" if limit == self.limits.max_part_bytes
                else "the upload's declared bytes")
        hint = "split the file into smaller parts"
        if declared_bytes is not None and declared_bytes > limit:
            raise _too_large("part", declared_bytes, limit, what, hint)
        part_id = new_id("part_")
        key = self._part_key(upload_id, part_id)
        await self._put(key, _limited(data, limit, "part", what, hint),
                        "application/octet-stream", "data")
        # Completed or cancelled while this part streamed in: it belongs to nothing.
        now = await self.uploads.get(upload_id, user)
        if now.value["status"] != "pending":
            await self._drop_blob(key)
            raise InvalidRequestError(
                f"upload {upload_id!r} became {now.value['status']} while the part was sent",
                param="upload_id", code=f"upload_{now.value['status']}")
        return UploadPart(id=part_id, created_at=_now(), upload_id=upload_id)

    async def complete_upload(self, upload_id: str, request: CompleteUploadRequest,
                              user: Owner) -> Upload:
        rec = await self._upload(upload_id, user, "complete")
        value = rec.value
        if len(set(request.part_ids)) != len(request.part_ids):
            raise InvalidRequestError("part_ids names a part twice", param="part_ids")
        keys: list[str] = []
        total = 0
        for i, part_id in enumerate(request.part_ids):
            key = self._part_key(upload_id, part_id) if _PART_ID.fullmatch(part_id) else None
            if key is None or not await self.blobs.exists(key):
                raise InvalidRequestError(f"upload {upload_id!r} has no part {part_id!r}",
                                          param=f"part_ids[{i}]", code="unknown_part")
            keys.append(key)
            total += (await self.blobs.head(key)).size
        if total != value["bytes"]:
            raise InvalidRequestError(
                f"the parts hold {total} bytes but the upload was created for "
                f"{value['bytes']}; send the missing parts or create a new upload",
                param="part_ids", code="size_mismatch")
        md5 = hashlib.md5()

        async def assembled() -> AsyncIterator[bytes]:
            for key in keys:
                async for chunk in await self.blobs.stream(key):
                    md5.update(chunk)
                    yield chunk

        file_id = self.files.new_id()
        authorize(self.files.policy, "create", self.files.kind, file_id, user, user)
        info = await self.blobs.put(file_id, assembled(), content_type=value["mime_type"])
        if request.md5 is not None and md5.hexdigest() != request.md5.lower():
            await self._drop_blob(file_id)
            raise InvalidRequestError(
                f"md5 mismatch: the parts hash to {md5.hexdigest()}, not {request.md5}",
                param="md5", code="md5_mismatch")
        after = value.get("file_expires_after")
        file = await self._record(
            file_id, user, size=info.size, filename=value["filename"],
            purpose=value["purpose"], content_type=value["mime_type"],
            expires_after=ExpiresAfter.model_validate(after) if after else None)

        def done(current: dict[str, Any]) -> dict[str, Any]:
            if current["status"] != "pending":
                raise ConflictError(f"upload {upload_id!r} was {current['status']} "
                                    "concurrently", code=f"upload_{current['status']}")
            current["status"] = "completed"
            current["file"] = file.model_dump(mode="json")
            return current

        try:
            final = await self.uploads.update(upload_id, user, done)
        except BaseException:
            await self._forget(file_id)
            raise
        await self._drop_parts(upload_id)
        return _upload(final)

    async def cancel_upload(self, upload_id: str, user: Owner) -> Upload:
        await self._upload(upload_id, user, "cancel")

        def cancel(current: dict[str, Any]) -> dict[str, Any]:
            if current["status"] != "pending":
                raise ConflictError(f"upload {upload_id!r} was {current['status']} "
                                    "concurrently", code=f"upload_{current['status']}")
            current["status"] = "cancelled"
            return current

        final = await self.uploads.update(upload_id, user, cancel)
        await self._drop_parts(upload_id)
        return _upload(final)

    async def _drop_parts(self, upload_id: str) -> None:
        try:
            for info in await self.blobs.list(f"uploads/{upload_id}/"):
                await self._drop_blob(info.key)
        except FnstackError:
            log.warning("listing an upload's parts failed", extra={"upload_id": upload_id})

    async def close(self) -> None:
        await self.files.close()
        await self.uploads.close()


# --- helpers -----------------------------------------------------------------------------


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"invalid purpose {purpose!r}; use one of: {', '.join(PURPOSES)}",
            param="purpose", code="invalid_value")


def _too_large(what: str, size: int, limit: int, setting: str, hint: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the {what} is {size} bytes, over the limit of {limit} bytes ({setting})"
        + (f"; {hint}" if hint else ""),
        param="bytes" if what == "upload" else ("data" if what == "part" else "file"))


async def _limited(data: AsyncIterator[bytes], limit: int, what: str, setting: str,
                   hint: str) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in data:
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLargeError(
                f"the {what} is over the limit of {limit} bytes ({setting}); {hint}",
                param="data" if what == "part" else "file")
        yield chunk


def _expired(value: dict[str, Any], now: float) -> bool:
    expires = value.get("expires_at")
    return expires is not None and expires <= now


def _content_type(value: dict[str, Any]) -> str:
    return value.get("content_type") or "application/octet-stream"


def _file(value: dict[str, Any]) -> FileObject:
    return FileObject.model_validate({k: v for k, v in value.items() if k != "content_type"})


def _upload(value: dict[str, Any]) -> Upload:
    return Upload.model_validate(
        {k: v for k, v in value.items() if k not in ("mime_type", "file_expires_after")})


def _no_file(file_id: str) -> NotFoundError:
    return NotFoundError(f"No such File object: {file_id}", param="file_id")


def _no_upload(upload_id: str) -> NotFoundError:
    return NotFoundError(f"No such Upload object: {upload_id}", param="upload_id")


async def _build(ctx: ServiceContext) -> Service:
    missing = [n for n in (RECORDS_STORE, BLOB_STORE) if not ctx.stores.has(n)]
    if missing:
        if ctx.config.apis is not None and Api.files in ctx.config.apis:
            raise ConfigError(
                f"the files API needs the stores {', '.join(missing)}: add "
                f"{RECORDS_STORE} (kv) and {BLOB_STORE} (blob) under storage.stores",
                path=f"storage.stores.{missing[0]}")
        return _Unconfigured(missing)
    kv = ctx.stores.kv(RECORDS_STORE)
    files = RecordStore(kv, kind="file", id_prefix="file-", key_prefix="file:",
                        policy=ctx.policy, max_list_limit=MAX_LIST_LIMIT)
    uploads = RecordStore(kv, kind="upload", id_prefix="upload_", key_prefix="upload:",
                          policy=ctx.policy, max_list_limit=MAX_LIST_LIMIT)
    return FilesService(files, uploads, ctx.stores.blob(BLOB_STORE), ctx.config.files)


class _Unconfigured(Service):
    """Served where the run config has no file stores: every call says what to add."""

    limits = FilesConfig()

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise NotFoundError(
                "the files API is not configured: the run config has no "
                f"{' or '.join(repr(m) for m in self.missing)} store under storage.stores",
                code="not_configured")

        return refuse


def _router() -> APIRouter:
    from fnstack.routes.files import router

    return router


spec = ServiceSpec(
    name="files",
    apis=(Api.files,),
    factory=_build,
    router=_router,
    stores=(StoreNeed(RECORDS_STORE, "kv", required=False),
            StoreNeed(BLOB_STORE, "blob", required=False)),
    description="files (blob content, owned records) and uploads in parts",
    streamed_bodies=("/v1/files", "/v1/uploads/{upload_id}/parts"),
)
