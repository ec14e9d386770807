"""Local-first image storage.

Every image is written to the appliance's own disk before anything else happens to it, with an
atomic write (temp file, fsync, rename), so a crash or a power cut leaves either the whole image
or nothing. Keys are derived from the content (sha256), so writing the same image twice is a
no-op and a retry can never overwrite a different image. Images are patient data: folders are
0700 and files 0600.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.errors import AppError

log = logging.getLogger(__name__)

_CLIENT_ID = re.compile(r"^[a-z0-9]{8,64}$")
_KEY = re.compile(r"^[a-z]+(/[A-Za-z0-9_.-]+)+$")


class InvalidKeyError(AppError):
    status_code = 400
    code = "invalid_key"


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int
    content_type: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_key(sha256: str, extension: str) -> str:
    return f"uploads/{sha256}{extension}"


def client_key(client_id: str, sha256: str, extension: str) -> str:
    if not _CLIENT_ID.match(client_id):
        raise InvalidKeyError("client id must be 8-64 lowercase letters or digits")
    return f"clientes/{client_id}/{sha256}{extension}"


def reference_key(sha256: str, extension: str) -> str:
    return f"referencia/{sha256}{extension}"


def check_key(key: str) -> str:
    """Keys come from our own code, but a path that escapes the root must be impossible."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise InvalidKeyError(f"invalid storage key {key!r}")
    return key


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(
        self, key: str, data: bytes, content_type: str, *, sha256: str | None = None
    ) -> StoredObject:
        """`sha256`: the digest when the caller has it already, so the bytes aren't hashed
        twice (and never on the event loop)."""
        path = self.path(key)  # refuses a key that escapes the root
        digest = await asyncio.to_thread(sha256_hex, data) if sha256 is None else sha256
        await asyncio.to_thread(self._write_atomic, path, data)
        return StoredObject(key, digest, len(data), content_type)

    async def read(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    @asynccontextmanager
    async def kept_only_if_recorded(self, key: str) -> AsyncIterator[None]:
        """Around storing an image and recording it: if the block fails (the database is
        down, the request is cancelled), a file this block created is removed again, so a
        request answered with an error leaves no untracked patient image behind. A file that
        was already there belongs to an earlier row and stays."""
        existed = await asyncio.to_thread(self.exists, key)
        try:
            yield
        except BaseException:
            if not existed:
                await asyncio.to_thread(self.path(key).unlink, True)
                log.info("removed an image whose request failed before it was recorded")
            raise

    def _make_private_dirs(self, folder: Path) -> None:
        """mkdir(parents=True) would give intermediate folders the default mode."""
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for each in reversed(missing):
            each.mkdir(mode=0o700, exist_ok=True)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        if path.is_file() and path.stat().st_size == len(data):
            return  # same key means same content
        self._make_private_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class PresignedUrls(Protocol):
    """What reading needs from Spaces: short-lived links to private objects."""

    async def presign_get(self, key: str, expires_s: int) -> str: ...


class ImageReader:
    """How the API serves a stored image (a patient radiograph or a catalog reference): the
    local copy when the appliance holds it, else a short-lived presigned GET on Spaces (the
    copy was pruned or lost). Nothing in the bucket is ever public."""

    def __init__(
        self, store: LocalImageStore, spaces: PresignedUrls | None, presign_seconds: int
    ) -> None:
        self._store = store
        self._spaces = spaces
        self._presign_seconds = presign_seconds

    async def url_or_bytes(self, key: str) -> bytes | str | None:
        """bytes: serve them; str: redirect (307) to it; None: not found."""
        data = await self._store.read(key)
        if data is not None or self._spaces is None:
            return data
        return await self._spaces.presign_get(key, self._presign_seconds)
