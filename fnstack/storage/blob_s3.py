"""blob on S3: object key = store prefix + key.

Streams are uploaded in 5 MiB parts (S3's minimum part size) so a large upload never
sits whole in a function's memory; a stream that ends before filling one part goes up
as a single PutObject instead. A failed or cancelled multipart upload is aborted, so
no orphan parts keep costing storage::

    stream --> buffer --(full part)--> CreateMultipartUpload (once) -> UploadPart n
                      \\-(ends < 5 MiB)-> PutObject
    end ------------------------------> CompleteMultipartUpload
    error/cancel ---------------------> AbortMultipartUpload, re-raise
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar
from urllib.parse import quote

from fnstack.errors import FnstackError, InternalError, NotFoundError, PayloadTooLargeError
from fnstack.storage._aws import call, shared_client, translate_client_error
from fnstack.storage.base import BlobInfo, BlobStore

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from fnstack.storage import BlobS3Config

__all__ = ["PART_SIZE", "S3BlobStore"]

P = ParamSpec("P")
R = TypeVar("R")

PART_SIZE = 5 * 1024 * 1024
_LIST_HEADS = 8  # concurrent HeadObject calls while listing

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_THROTTLED = frozenset({"SlowDown", "ThrottlingException", "RequestLimitExceeded", "503"})


class S3BlobStore(BlobStore):
    def __init__(self, config: BlobS3Config, prefix: str) -> None:
        super().__init__(prefix)
        self.bucket = config.bucket
        self._resource = f"S3 bucket {config.bucket!r}"
        # Custom endpoints (moto, MinIO, LocalStack) rarely resolve bucket subdomains.
        addressing: Literal["path", "auto"] = "path" if config.endpoint_url else "auto"
        self._client = shared_client(
            "s3",
            config.region,
            config.endpoint_url,
            resource=self._resource,
            read_timeout=60,
            s3_addressing=addressing,
        )

    def _object(self, key: str) -> str:
        return self.prefix + key

    # --- primitives ------------------------------------------------------------------

    async def _put_bytes(self, key: str, data: bytes, content_type: str) -> BlobInfo:
        resp = await self._call(
            self._client.put_object,
            Bucket=self.bucket,
            Key=self._object(key),
            Body=data,
            ContentType=content_type,
        )
        return BlobInfo(key, len(data), content_type, etag=_etag(resp.get("ETag")))

    async def _put_stream(
        self, key: str, data: AsyncIterator[bytes], content_type: str
    ) -> BlobInfo:
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []
        try:
            async for chunk in data:
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = await self._start_upload(key, content_type)
                    part = bytes(buffer[:PART_SIZE])
                    del buffer[:PART_SIZE]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
            if upload_id is None:
                return await self._put_bytes(key, bytes(buffer), content_type)
            if buffer:  # the last part may be smaller than the minimum
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            done = await self._call(
                self._client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self._object(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            if upload_id is not None:
                await self._abort(key, upload_id)
            raise
        return BlobInfo(key, size, content_type, etag=_etag(done.get("ETag")))

    async def _open_stream(self, key: str) -> AsyncIterator[bytes]:
        # GetObject before the first chunk, so a missing object raises NotFoundError
        # from stream() itself, as the base promises.
        try:
            resp = await self._call(
                self._client.get_object, Bucket=self.bucket, Key=self._object(key)
            )
        except NotFoundError as exc:
            raise NotFoundError(f"object {key!r} not found") from exc
        body = resp["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await self._call(body.read, self.chunk_size):
                    yield chunk
            finally:
                body.close()

        return chunks()

    async def _head(self, key: str) -> BlobInfo | None:
        try:
            resp = await self._call(
                self._client.head_object, Bucket=self.bucket, Key=self._object(key)
            )
        except NotFoundError:
            return None
        return BlobInfo(
            key=key,
            size=resp["ContentLength"],
            content_type=resp.get("ContentType", "application/octet-stream"),
            etag=_etag(resp.get("ETag")),
            last_modified=resp["LastModified"].timestamp() if "LastModified" in resp else None,
        )

    async def _delete(self, key: str) -> bool:
        # DeleteObject succeeds whether or not the object existed; HEAD first tells which.
        if await self._head(key) is None:
            return False
        await self._call(self._client.delete_object, Bucket=self.bucket, Key=self._object(key))
        return True

    async def _list(self, prefix: str) -> list[BlobInfo]:
        keys: list[str] = []
        token: str | None = None
        while True:
            if token is None:
                page = await self._call(
                    self._client.list_objects_v2, Bucket=self.bucket, Prefix=self._object(prefix)
                )
            else:
                page = await self._call(
                    self._client.list_objects_v2,
                    Bucket=self.bucket,
                    Prefix=self._object(prefix),
                    ContinuationToken=token,
                )
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                # Objects written around this store (e.g. "a//b") cannot be addressed
                # through it; leave them out rather than list what get() refuses.
                with suppress(FnstackError):
                    self._check_key(key)
                    keys.append(key)
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        # ListObjectsV2 carries no content type: HEAD each object, a few at a time.
        gate = asyncio.Semaphore(_LIST_HEADS)

        async def head(key: str) -> BlobInfo | None:
            async with gate:
                return await self._head(key)

        infos = await asyncio.gather(*(head(key) for key in keys))
        return [info for info in infos if info is not None]  # deleted while listing

    async def download_url(self, key: str, *, expires_s: int, content_type: str,
                           filename: str) -> str | None:
        self._check_key(key)
        # Signed locally with the function's credentials: no request to S3 here.
        disposition = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._object(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=expires_s,
        )
        return url

    # --- multipart -------------------------------------------------------------------

    async def _start_upload(self, key: str, content_type: str) -> str:
        resp = await self._call(
            self._client.create_multipart_upload,
            Bucket=self.bucket,
            Key=self._object(key),
            ContentType=content_type,
        )
        return resp["UploadId"]

    async def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> CompletedPartTypeDef:
        resp = await self._call(
            self._client.upload_part,
            Bucket=self.bucket,
            Key=self._object(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return {"ETag": resp["ETag"], "PartNumber": number}

    async def _abort(self, key: str, upload_id: str) -> None:
        # Best effort: the original error matters more; a bucket lifecycle rule for
        # incomplete uploads is the backstop.
        with suppress(FnstackError):
            await self._call(
                self._client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=self._object(key),
                UploadId=upload_id,
            )

    # --- the error boundary ------------------------------------------------------------

    async def _call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await call(self._resource, self._translate, fn, *args, **kwargs)

    def _translate(self, exc: ClientError) -> FnstackError:
        what = f"S3 {exc.operation_name} in bucket {self.bucket!r}"
        return translate_client_error(exc, what, throttled=_THROTTLED, claim=self._claim)

    def _claim(self, code: str, message: str, what: str) -> FnstackError | None:
        if code in _MISSING:
            return NotFoundError(f"{what}: no such object")
        if code == "NoSuchBucket":
            return InternalError(
                f"S3 bucket {self.bucket!r} does not exist; deploy the stack or fix the "
                "bucket name in storage.backends",
                code="bucket_not_found",
            )
        if code == "EntityTooLarge":
            return PayloadTooLargeError(f"object too large for {what}")
        return None


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None
