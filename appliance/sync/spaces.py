"""The Spaces side of replication: the S3 client (it only talks to S3), and what "replicated"
means.

An object counts as replicated only when a HEAD shows the right size, the sha256 metadata and
the ETag S3 computes from the bytes it received (MD5, or MD5 of the part MD5s for a multipart
upload: the part size is ours, so the ETag is predictable and needs no provider extension).
Keys are content-addressed, so uploading again rewrites the same bytes under the same key.
Every object is private; reads of a replica go through short-lived presigned URLs
(appliance.storage.ImageReader). The worker that drains the outbox is appliance.sync.worker;
the outbox itself is appliance.sync.outbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from appliance.settings import SpacesSettings
from appliance.sync.outbox import OutboxItem

log = logging.getLogger(__name__)

# Also the part size, so that a multipart object's ETag can be computed locally.
PART_SIZE = 8 * 1024 * 1024
PART_CONCURRENCY = 4


class LocalCopyError(Exception):
    """The local copy is missing or no longer matches its sha256: never upload it."""


class VerificationError(Exception):
    """The object in Spaces does not match what was sent."""


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str
    etag: str  # what S3 reports for these bytes uploaded with PART_SIZE parts


@dataclass(frozen=True)
class RemoteObject:
    size: int
    sha256: str | None
    etag: str


def digest_file(path: Path) -> FileDigest:
    """sha256 of the bytes and the ETag S3 will compute for them, in one read."""
    sha, whole, parts, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), [], 0
    with path.open("rb") as f:
        while chunk := f.read(PART_SIZE):
            sha.update(chunk)
            whole.update(chunk)
            parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
            size += len(chunk)
    if size < PART_SIZE:
        etag = whole.hexdigest()
    else:
        etag = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
    return FileDigest(size, sha.hexdigest(), etag)


def is_unavailable(exc: BaseException) -> bool:
    """Spaces as a whole failed (not this item): network, timeouts, 5xx, throttling, refused
    credentials or a missing bucket. Waiting helps; counting the item's attempts does not."""
    if isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | ConnectionError
        | TimeoutError,
    ):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = str(exc.response.get("Error", {}).get("Code", ""))
        unavailable_codes = ("NoSuchBucket", "SlowDown", "RequestTimeout")
        return status >= 500 or status in (401, 403, 429) or code in unavailable_codes
    return False


class SpacesClient:
    """The few S3 calls replication and serving need. Credentials never reach a log line or
    an error text (`redact`)."""

    def __init__(self, settings: SpacesSettings) -> None:
        if not settings.enabled:
            raise ValueError("Spaces replication is not configured (RAIOX_SPACES_*)")
        credentials = {
            "aws_access_key_id": settings.access_key,
            "aws_secret_access_key": settings.secret_key,
            "region_name": settings.region or "us-east-1",
        }
        self.bucket = str(settings.bucket)
        self._endpoint = settings.endpoint
        self._secrets = [s for s in (settings.access_key, settings.secret_key) if s]
        self._session = aioboto3.Session(**credentials)
        # Path style works on moto and Spaces alike; checksums only when an operation needs
        # them, since S3-compatible stores reject botocore's default CRC headers.
        self._config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=4 * PART_CONCURRENCY,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # Presigning is pure computation: one plain client does it in ~0.1 ms, where a fresh
        # async client costs ~5 ms.
        self._presigner = boto3.session.Session(**credentials).client(
            "s3", endpoint_url=self._endpoint, config=self._config
        )
        self._transfer = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=PART_CONCURRENCY,
        )

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        async with self._session.client(
            "s3", endpoint_url=self._endpoint, config=self._config
        ) as s3:
            yield s3

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def head(self, s3: Any, key: str) -> RemoteObject | None:
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return RemoteObject(
            size=int(head["ContentLength"]),
            sha256=head.get("Metadata", {}).get("sha256"),
            etag=str(head.get("ETag", "")).strip('"'),
        )

    async def upload(self, s3: Any, item: OutboxItem, path: Path) -> None:
        if item.size_bytes >= PART_SIZE:
            await self._abort_orphan_uploads(s3, item.storage_key)
        extra = {
            "ACL": "private",
            "ContentType": item.content_type,
            "Metadata": {"sha256": item.sha256},
        }
        with path.open("rb") as f:
            await s3.upload_fileobj(
                _ThreadedReader(f),
                self.bucket,
                item.storage_key,
                ExtraArgs=extra,
                Config=self._transfer,
            )

    async def _abort_orphan_uploads(self, s3: Any, key: str) -> None:
        """A worker killed mid-multipart leaves parts behind (billed, invisible). Whoever holds
        the item's lease is the only writer of its key, so any upload in progress is such an
        orphan."""
        listing = await s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for upload in listing.get("Uploads", []):
            if upload["Key"] == key:
                await s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                )
                log.info("aborted an orphaned multipart upload of %s", key)

    async def presign_get(self, key: str, expires_s: int) -> str:
        url: str = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url


class _ThreadedReader:
    """aioboto3 awaits a read that returns an awaitable: file reads leave the event loop."""

    def __init__(self, f: Any) -> None:
        self._f = f

    async def read(self, size: int = -1) -> bytes:
        data: bytes = await asyncio.to_thread(self._f.read, size)
        return data


def matches(remote: RemoteObject | None, item: OutboxItem, local: FileDigest) -> bool:
    """What "replicated" means: the replica has the recorded size and sha256 and the ETag of
    exactly the local bytes."""
    return (
        remote is not None
        and remote.size == item.size_bytes
        and remote.sha256 == item.sha256
        and remote.etag == local.etag
    )


def local_digest(path: Path, item: OutboxItem) -> FileDigest:
    """The local copy's digest, refusing one that is not the recorded image."""
    try:
        digest = digest_file(path)
    except FileNotFoundError:
        raise LocalCopyError(f"local copy of {item.storage_key} is missing") from None
    if digest.sha256 != item.sha256 or digest.size != item.size_bytes:
        raise LocalCopyError(f"local copy of {item.storage_key} no longer matches its sha256")
    return digest
