"""Files and uploads: parse the multipart body, call the service, serialize.

Multipart bodies are parsed by Starlette's parser over a request stream counted
against the route's limit (413 as soon as it is passed, before the rest is read);
the file part spools to a temporary file past 1 MiB, never whole in memory, and
streams from there into the blob store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from fnstack.api.files import PURPOSES, CompleteUploadRequest, CreateUploadRequest, ExpiresAfter
from fnstack.errors import FnstackError, InvalidRequestError, PayloadTooLargeError
from fnstack.routes import json_response, principal, service
from fnstack.services.files import FilesService

__all__ = ["router"]

router = APIRouter(tags=["files"])

# Room for the multipart framing and the small fields around the file part.
_FRAMING = 64 * 1024
_CHUNK = 1024 * 1024
# An oversized body is read to its end (and dropped) up to this much, so the client
# finishes sending and reads the 413 instead of a reset connection.
_DRAIN = 128 * 1024 * 1024


async def _files(request: Request) -> FilesService:
    svc: FilesService = await service(request, "files")
    return svc


async def _drain(request: Request) -> None:
    left = _DRAIN
    while left > 0:
        message = await request.receive()
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _multipart(request: Request, limit: int, what: str) -> FormData:
    """The form of a multipart body of at most ``limit`` bytes of content."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise InvalidRequestError(
            f"send the {what} as multipart/form-data (got {ctype or 'no content type'!r})",
            param="file" if what == "file" else "data", code="invalid_content_type")
    cap = limit + _FRAMING
    too_large = PayloadTooLargeError(
        f"the request body is over the limit of {limit} bytes for a {what}",
        param="file" if what == "file" else "data")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        await _drain(request)
        raise too_large

    async def counted() -> AsyncGenerator[bytes, None]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > cap:
                raise too_large
            yield chunk

    parser = MultiPartParser(request.headers, counted(), max_files=1, max_fields=16,
                             max_part_size=64 * 1024)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequestError(f"malformed multipart body: {exc.message}",
                                  code="invalid_multipart") from None
    except PayloadTooLargeError:
        await _drain(request)
        raise


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise InvalidRequestError(f"{name} must be a form field, not a file", param=name)
    return value


def _upload_file(form: FormData, name: str) -> UploadFile:
    value = form.get(name)
    if not isinstance(value, UploadFile):
        raise InvalidRequestError(
            f"missing required parameter: {name!r} (a file part of the multipart body)",
            param=name)
    return value


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    try:
        while chunk := await upload.read(_CHUNK):
            yield chunk
    finally:
        await upload.close()


def _expires_after(form: FormData) -> ExpiresAfter | None:
    # The SDKs send nested objects as bracketed fields: expires_after[anchor]=created_at.
    anchor = _field(form, "expires_after[anchor]")
    seconds = _field(form, "expires_after[seconds]")
    whole = _field(form, "expires_after")
    if anchor is None and seconds is None and whole is None:
        return None
    try:
        if whole is not None:
            return ExpiresAfter.model_validate(json.loads(whole))
        return ExpiresAfter.model_validate({"anchor": anchor, "seconds": seconds})
    except (ValidationError, ValueError) as exc:
        detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise InvalidRequestError(
            f"invalid expires_after: {detail} (anchor 'created_at', seconds 3600-2592000)",
            param="expires_after") from None


def _multipart_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    # The body is parsed by hand (streamed): describe it for the OpenAPI document.
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": required}}}}}


_FILE_BODY = _multipart_schema({
    "file": {"type": "string", "format": "binary"},
    "purpose": {"type": "string", "enum": list(PURPOSES)},
    "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
    "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
}, ["file", "purpose"])
_PART_BODY = _multipart_schema({"data": {"type": "string", "format": "binary"}}, ["data"])


@router.post("/v1/files", response_model=None, openapi_extra=_FILE_BODY)
async def create_file(request: Request) -> Response:
    files = await _files(request)
    user = principal(request)
    form = await _multipart(request, files.limits.max_file_bytes, "file")
    try:
        purpose = _field(form, "purpose")
        if purpose is None:
            raise InvalidRequestError("missing required parameter: 'purpose'", param="purpose")
        upload = _upload_file(form, "file")
        result = await files.create(
            user,
            filename=upload.filename or "upload",
            content_type=upload.content_type or "application/octet-stream",
            purpose=purpose,
            data=_chunks(upload),
            expires_after=_expires_after(form),
            declared_bytes=upload.size,
        )
    finally:
        await form.close()
    return json_response(result)


@router.get("/v1/files", response_model=None)
async def list_files(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=10_000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> Response:
    files = await _files(request)
    return json_response(await files.list(principal(request), after=after, limit=limit,
                                          order=order, purpose=purpose))


@router.get("/v1/files/{file_id}", response_model=None)
async def get_file(file_id: str, request: Request) -> Response:
    files = await _files(request)
    return json_response(await files.get(file_id, principal(request)))


@router.get("/v1/files/{file_id}/content", response_model=None)
async def get_file_content(file_id: str, request: Request) -> Response:
    files = await _files(request)
    user = principal(request)
    url = await files.content_url(file_id, user)
    if url is not None:
        # Larger than a function may answer (AWS): the SDKs follow this to S3.
        return RedirectResponse(url, status_code=307)
    content = await files.content(file_id, user)
    name = content.file.filename
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "'").replace("\\", "_")
    headers = {
        "content-length": str(content.file.bytes),
        # RFC 6266: a plain fallback, and the exact name in UTF-8 for clients that read it.
        "content-disposition": f"attachment; filename=\"{ascii_name}\"; "
                               f"filename*=UTF-8''{quote(name, safe='')}",
    }
    return StreamingResponse(content.chunks, media_type=content.content_type, headers=headers)


@router.delete("/v1/files/{file_id}", response_model=None)
async def delete_file(file_id: str, request: Request) -> Response:
    files = await _files(request)
    return json_response(await files.delete(file_id, principal(request)))


# --- uploads -----------------------------------------------------------------------------


@router.post("/v1/uploads", response_model=None)
async def create_upload(body: CreateUploadRequest, request: Request) -> Response:
    files = await _files(request)
    return json_response(await files.create_upload(body, principal(request)))


@router.post("/v1/uploads/{upload_id}/parts", response_model=None, openapi_extra=_PART_BODY)
async def add_upload_part(upload_id: str, request: Request) -> Response:
    files = await _files(request)
    user = principal(request)
    # Before parsing the body: a part for an unknown or finished upload is refused
    # without storing it (the body is drained so the client reads the answer).
    try:
        await files.pending_upload(upload_id, user)
    except FnstackError:
        await _drain(request)
        raise
    form = await _multipart(request, files.limits.max_part_bytes, "part")
    try:
        data = _upload_file(form, "data")
        part = await files.add_part(upload_id, user, _chunks(data), declared_bytes=data.size)
    finally:
        await form.close()
    return json_response(part)


@router.post("/v1/uploads/{upload_id}/complete", response_model=None)
async def complete_upload(upload_id: str, body: CompleteUploadRequest,
                          request: Request) -> Response:
    files = await _files(request)
    return json_response(await files.complete_upload(upload_id, body, principal(request)))


@router.post("/v1/uploads/{upload_id}/cancel", response_model=None)
async def cancel_upload(upload_id: str, request: Request) -> Response:
    files = await _files(request)
    return json_response(await files.cancel_upload(upload_id, principal(request)))

