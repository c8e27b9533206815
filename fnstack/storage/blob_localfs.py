"""blob on a local folder. Writes go to a temp file then rename, so readers never see
half an object; the content type lives in a sidecar under ``.meta/``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fnstack.errors import NotFoundError
from fnstack.storage.base import BlobInfo, BlobStore

_META = ".meta"


class LocalFSBlobStore(BlobStore):
    def __init__(self, root: Path, prefix: str) -> None:
        super().__init__(prefix)
        self.root = root
        self.base = root / prefix if prefix else root
        self.meta = root / _META / prefix if prefix else root / _META

    def _path(self, key: str) -> Path:
        return self.base / key

    def _meta_path(self, key: str) -> Path:
        return self.meta / (key + ".json")

    def _write_meta(self, key: str, info: BlobInfo) -> None:
        path = self._meta_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"content_type": info.content_type, "etag": info.etag}))

    def _info(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        meta: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            meta = json.loads(self._meta_path(key).read_text())
        return BlobInfo(
            key=key,
            size=st.st_size,
            content_type=meta.get("content_type", "application/octet-stream"),
            etag=meta.get("etag"),
            last_modified=st.st_mtime,
        )

    def _commit(self, key: str, tmp: Path, digest: str, size: int, content_type: str) -> BlobInfo:
        dest = self._path(key)
        info = BlobInfo(key=key, size=size, content_type=content_type, etag=digest)
        # Metadata first: a reader that sees the object then finds its content type.
        self._write_meta(key, info)
        os.replace(tmp, dest)
        return info

    def _tmp(self, key: str) -> tuple[int, Path]:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        return fd, Path(name)

    async def _put_bytes(self, key: str, data: bytes, content_type: str) -> BlobInfo:
        def write() -> BlobInfo:
            fd, tmp = self._tmp(key)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                digest = hashlib.md5(data).hexdigest()
                return self._commit(key, tmp, digest, len(data), content_type)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        return await asyncio.to_thread(write)

    async def _put_stream(
        self, key: str, data: AsyncIterator[bytes], content_type: str
    ) -> BlobInfo:
        fd, tmp = await asyncio.to_thread(self._tmp, key)
        digest = hashlib.md5()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in data:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(f.write, chunk)
            return await asyncio.to_thread(
                self._commit, key, tmp, digest.hexdigest(), size, content_type
            )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def _open_stream(self, key: str) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"object {key!r} not found") from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(f.read, self.chunk_size):
                    yield chunk
            finally:
                f.close()

        return chunks()

    async def _head(self, key: str) -> BlobInfo | None:
        return await asyncio.to_thread(self._info, key)

    async def _delete(self, key: str) -> bool:
        def remove() -> bool:
            self._meta_path(key).unlink(missing_ok=True)
            try:
                self._path(key).unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return False
            return True

        return await asyncio.to_thread(remove)

    async def _list(self, prefix: str) -> list[BlobInfo]:
        def walk() -> list[BlobInfo]:
            out: list[BlobInfo] = []
            if not self.base.is_dir():
                return out
            for dirpath, dirnames, filenames in os.walk(self.base):
                here = Path(dirpath)
                if here == self.base:
                    dirnames[:] = [d for d in dirnames if d != _META]
                for name in filenames:
                    if name.startswith(".tmp-"):
                        continue
                    key = (here / name).relative_to(self.base).as_posix()
                    if key.startswith(prefix) and (info := self._info(key)):
                        out.append(info)
            return out

        return await asyncio.to_thread(walk)
