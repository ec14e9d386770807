"""Replication of the local images to DigitalOcean Spaces (any S3 endpoint), from the outbox.

A worker claims due rows with `FOR UPDATE SKIP LOCKED` and, in the same statement, pushes
their next attempt a lease into the future: two workers never take the same row, and a worker
killed mid-upload gives its row back when the lease runs out. An object is marked done only
after a HEAD shows the right size and sha256. Keys are content-addressed, so a repeated upload
rewrites the same bytes to the same key. Failures back off exponentially with full jitter and
end as dead letters the operator can requeue. Every object is private.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aioboto3
import asyncpg
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from appliance.progress import Progress
from appliance.settings import Settings
from appliance.storage import LocalImageStore

log = logging.getLogger(__name__)
MULTIPART_THRESHOLD = 8 * 1024 * 1024
LEASE_SECONDS = 300.0
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0


@dataclass(frozen=True)
class OutboxItem:
    id: int
    storage_key: str
    sha256: str
    size_bytes: int
    content_type: str
    attempts: int


@dataclass(frozen=True)
class SyncStatus:
    pending: int
    due: int
    done: int
    oldest_pending: datetime | None
    dead: list[tuple[str, int, str | None]]  # key, attempts, last error


class SpacesClient:
    """The few S3 calls replication needs, with credentials that never reach a log line."""

    def __init__(self, settings: Settings) -> None:
        if not settings.spaces_enabled:
            raise ValueError("Spaces replication is not configured (RAIOX_SPACES_*)")
        self._session = aioboto3.Session(
            aws_access_key_id=settings.spaces_access_key,
            aws_secret_access_key=settings.spaces_secret_key,
            region_name=settings.spaces_region or "us-east-1",
        )
        self._endpoint = settings.spaces_endpoint
        self.bucket = str(settings.spaces_bucket)
        self._config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )

    def client(self) -> Any:
        return self._session.client("s3", endpoint_url=self._endpoint, config=self._config)

    async def upload(self, s3: Any, item: OutboxItem, path: Any) -> None:
        extra = {
            "ACL": "private",
            "ContentType": item.content_type,
            "Metadata": {"sha256": item.sha256},
        }
        with open(path, "rb") as f:  # noqa: ASYNC230 - the upload streams the file in chunks
            await s3.upload_fileobj(
                f,
                self.bucket,
                item.storage_key,
                ExtraArgs=extra,
                Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD),
            )

    async def verified(self, s3: Any, item: OutboxItem) -> bool:
        """True when the object exists with the outbox row's size and sha256."""
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=item.storage_key)
        except s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return bool(
            head["ContentLength"] == item.size_bytes
            and head.get("Metadata", {}).get("sha256") == item.sha256
        )

    async def presign_get(self, key: str, expires_s: int) -> str:
        async with self.client() as s3:
            url: str = await s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        return url


class Replicator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: LocalImageStore,
        spaces: SpacesClient,
        *,
        max_attempts: int,
        lease_seconds: float = LEASE_SECONDS,
        backoff_base: float = BACKOFF_BASE_SECONDS,
    ) -> None:
        self._pool = pool
        self._store = store
        self._spaces = spaces
        self._max_attempts = max_attempts
        self._lease = lease_seconds
        self._backoff_base = backoff_base
        self.uploaded: list[str] = []  # keys this worker uploaded (tests, progress)

    async def claim(self, limit: int = 16, due_by: datetime | None = None) -> list[OutboxItem]:
        """Lease up to `limit` rows due by `due_by` (default: now)."""
        rows = await self._pool.fetch(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2), "
            "attempts = attempts + 1 WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' "
            "AND next_attempt_at <= coalesce($3, now()) ORDER BY next_attempt_at LIMIT $1 "
            "FOR UPDATE SKIP LOCKED) "
            "RETURNING id, storage_key, sha256, size_bytes, content_type, attempts",
            limit,
            self._lease,
            due_by,
        )
        return [OutboxItem(**dict(r)) for r in rows]

    async def run_once(self, progress: Callable[[int, str], Progress] | None = None) -> int:
        """Replicate what is due now (a failure waits for a later pass); returns how many
        objects were confirmed."""
        confirmed = 0
        started: datetime = await self._pool.fetchval("SELECT now()")
        bar = progress(await self._due(), "sync") if progress else None
        async with self._spaces.client() as s3:
            while items := await self.claim(due_by=started):
                for item in items:
                    confirmed += await self._replicate(s3, item)
                    if bar:
                        bar.advance(note=item.storage_key.rsplit("/", 1)[-1][:16])
        if bar:
            bar.close()
        return confirmed

    async def run_forever(self, poll_seconds: float) -> None:
        while True:
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("sync pass failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(poll_seconds)

    async def _replicate(self, s3: Any, item: OutboxItem) -> int:
        try:
            if not await self._spaces.verified(s3, item):
                path = self._store.path(item.storage_key)
                if not path.is_file():
                    raise FileNotFoundError(f"local copy of {item.storage_key} is missing")
                await self._spaces.upload(s3, item, path)
                self.uploaded.append(item.storage_key)
                if not await self._spaces.verified(s3, item):
                    raise ValueError("uploaded object does not match its size and sha256")
        except Exception as exc:  # any failure: back off, never lose the row
            await self._failed(item, f"{type(exc).__name__}: {str(exc)[:200]}")
            return 0
        await self._pool.execute(
            "UPDATE outbox SET state = 'done', done_at = now(), last_error = NULL WHERE id = $1",
            item.id,
        )
        return 1

    async def _failed(self, item: OutboxItem, error: str) -> None:
        if item.attempts >= self._max_attempts:
            log.error(
                "replication of %s gave up after %d attempts", item.storage_key, item.attempts
            )
            await self._pool.execute(
                "UPDATE outbox SET state = 'dead', last_error = $2 WHERE id = $1", item.id, error
            )
            return
        delay = random.uniform(0, min(BACKOFF_CAP_SECONDS, self._backoff_base * 2**item.attempts))
        await self._pool.execute(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2), "
            "last_error = $3 WHERE id = $1",
            item.id,
            delay,
            error,
        )

    async def _due(self) -> int:
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND next_attempt_at <= now()"
        )
        return count


async def sync_status(pool: asyncpg.Pool) -> SyncStatus:
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, "
        "count(*) FILTER (WHERE state = 'pending' AND next_attempt_at <= now()) AS due, "
        "count(*) FILTER (WHERE state = 'done') AS done, "
        "min(created_at) FILTER (WHERE state = 'pending') AS oldest FROM outbox"
    )
    dead = await pool.fetch(
        "SELECT storage_key, attempts, last_error FROM outbox WHERE state = 'dead' ORDER BY id"
    )
    return SyncStatus(
        row["pending"],
        row["due"],
        row["done"],
        row["oldest"],
        [(r["storage_key"], r["attempts"], r["last_error"]) for r in dead],
    )


async def requeue_dead(pool: asyncpg.Pool) -> int:
    result: str = await pool.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now() "
        "WHERE state = 'dead'"
    )
    return int(result.split()[-1])
