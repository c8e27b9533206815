"""The Files and Uploads APIs: wire models and the service contract.

Fields in the order of the OpenAI reference:
https://platform.openai.com/docs/api-reference/files and
https://platform.openai.com/docs/api-reference/uploads

A file's content lives in the blob store, its metadata in an owned record; a large file
arrives through an Upload in parts (each part its own request, so no request holds the
whole file) and becomes a File when completed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.common import DeletedObject, ListPage, Order

__all__ = [
    "PURPOSES",
    "CompleteUploadRequest",
    "CreateUploadRequest",
    "ExpiresAfter",
    "FileContent",
    "FileDeleted",
    "FileList",
    "FileObject",
    "FilePurpose",
    "FilesApi",
    "Upload",
    "UploadPart",
    "UploadStatus",
]

# What a client may upload with (the *_output purposes are written by the platform).
FilePurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
UploadStatus = Literal["pending", "completed", "cancelled", "expired"]

# OpenAI's bounds on `expires_after.seconds`: an hour to 30 days.
MIN_EXPIRY_S = 3600
MAX_EXPIRY_S = 30 * 24 * 3600


class ExpiresAfter(BaseModel):
    """Expire the file ``seconds`` after its ``anchor`` (only ``created_at``)."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


class FileObject(BaseModel):
    """https://platform.openai.com/docs/api-reference/files/object"""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    # Deprecated by OpenAI, still sent: a stored file is always processed.
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


FileList = ListPage[FileObject]


class FileDeleted(DeletedObject):
    object: str = "file"


class CreateUploadRequest(BaseModel):
    """https://platform.openai.com/docs/api-reference/uploads/create"""

    model_config = ConfigDict(extra="forbid")

    bytes: int = Field(ge=1)
    filename: str = Field(min_length=1, max_length=512)
    mime_type: str = Field(min_length=1, max_length=255)
    purpose: FilePurpose
    expires_after: ExpiresAfter | None = None


class Upload(BaseModel):
    """https://platform.openai.com/docs/api-reference/uploads/object"""

    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: UploadStatus
    file: FileObject | None = None


class UploadPart(BaseModel):
    """https://platform.openai.com/docs/api-reference/uploads/part-object"""

    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class CompleteUploadRequest(BaseModel):
    """https://platform.openai.com/docs/api-reference/uploads/complete"""

    model_config = ConfigDict(extra="forbid")

    part_ids: list[str] = Field(min_length=1, max_length=10_000)
    md5: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")


class FileContent:
    """A file's content as it streams out of the blob store."""

    def __init__(self, file: FileObject, content_type: str,
                 chunks: AsyncIterator[bytes]) -> None:
        self.file = file
        self.content_type = content_type
        self.chunks = chunks


class FilesApi(Protocol):
    """The files service. ``user`` is the caller's principal (an ``Owner``): another
    principal's file or upload is a 404. Sizes past the configured limits are 413s."""

    async def create(self, user: object, *, filename: str, content_type: str,
                     purpose: str, data: AsyncIterator[bytes],
                     expires_after: ExpiresAfter | None = None,
                     declared_bytes: int | None = None) -> FileObject: ...

    async def list(self, user: object, *, after: str | None = None, limit: int = 10_000,
                   order: Order = "desc", purpose: str | None = None) -> FileList: ...

    async def get(self, file_id: str, user: object) -> FileObject: ...

    async def content(self, file_id: str, user: object) -> FileContent: ...

    async def content_url(self, file_id: str, user: object) -> str | None:
        """A short-lived URL serving a large file's content directly (S3, past
        ``files.redirect_content_bytes``); None: stream it with `content`."""
        ...

    async def delete(self, file_id: str, user: object) -> FileDeleted: ...

    async def create_upload(self, request: CreateUploadRequest, user: object) -> Upload: ...

    async def add_part(self, upload_id: str, user: object, data: AsyncIterator[bytes],
                       declared_bytes: int | None = None) -> UploadPart: ...

    async def complete_upload(self, upload_id: str, request: CompleteUploadRequest,
                              user: object) -> Upload: ...

    async def cancel_upload(self, upload_id: str, user: object) -> Upload: ...
