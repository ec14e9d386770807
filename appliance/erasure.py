"""Erasing a submission: health data goes for good, from the database, the local disk and
Spaces, and the audit log says who erased what and when (never whose data it was).

The database rows go first, in one transaction that also records every image key still to
delete in Spaces; then the local files; then the Spaces copies. An unreachable Spaces leaves
its keys in `pending_erasures`, retried by the next erasure or from the console, so no copy
is forgotten. An image whose bytes another submission or a reference still uses (keys are
content addresses) keeps its file. A radiograph promoted to a reference image is erased with
its reference. An image being uploaded to Spaces right now is not erased until the upload
ends (the worker would re-create the object after the delete). appliance.retention applies
the same rules (the functions below) to the images of old submissions.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from appliance.audit import record
from appliance.errors import AppError
from appliance.storage import LocalImageStore
from appliance.submissions import SubmissionNotFoundError
from appliance.sync import outbox

if TYPE_CHECKING:  # boto3 loads only when Spaces is configured
    from appliance.sync.spaces import SpacesClient

log = logging.getLogger(__name__)


class ErasureBusyError(AppError):
    status_code = 409
    code = "erasure_busy"


@dataclass(frozen=True)
class ErasureReport:
    images: int
    local_files: int
    remote_pending: int  # Spaces copies still to delete (Spaces unreachable)


class Erasure:
    def __init__(
        self, pool: asyncpg.Pool, store: LocalImageStore, spaces: SpacesClient | None
    ) -> None:
        self._pool = pool
        self._store = store
        self._spaces = spaces

    async def erase(self, submission_id: uuid.UUID, *, actor: str) -> ErasureReport:
        async with self._pool.acquire() as conn, conn.transaction():
            keys, images = await self._delete_rows(conn, submission_id)
            await record(
                conn, actor, "submission.erase", f"submission:{submission_id}", {"images": images}
            )
        removed = await remove_local_files(self._store, keys)
        pending = await self.retry_remote()
        return ErasureReport(images, removed, pending)

    @property
    def replicated(self) -> bool:
        """Whether images have Spaces copies to delete (Spaces is configured)."""
        return self._spaces is not None

    async def pending(self) -> int:
        count: int = await self._pool.fetchval("SELECT count(*) FROM pending_erasures")
        return count

    async def retry_remote(self) -> int:
        """Delete the Spaces copies still pending; returns how many remain."""
        keys = [r["storage_key"] for r in await self._pool.fetch(_PENDING)]
        if keys and self._spaces is not None:
            await self._delete_remote(self._spaces, keys)
        return await self.pending()

    async def _delete_rows(
        self, conn: asyncpg.Connection, submission_id: uuid.UUID
    ) -> tuple[list[str], int]:
        found = await conn.fetchval(
            "SELECT id FROM submissions WHERE id = $1 FOR UPDATE", submission_id
        )
        if found is None:
            raise SubmissionNotFoundError("No such submission.")
        rows = await conn.fetch(
            "SELECT si.storage_key, l.promoted_reference_id FROM submission_images si "
            "LEFT JOIN image_labels l ON l.submission_image_id = si.id "
            "WHERE si.submission_id = $1",
            submission_id,
        )
        promoted = [r["promoted_reference_id"] for r in rows if r["promoted_reference_id"]]
        ref_keys = await conn.fetch(
            "DELETE FROM reference_images WHERE id = ANY($1::bigint[]) RETURNING storage_key",
            promoted,
        )
        await conn.execute("DELETE FROM submissions WHERE id = $1", submission_id)
        keys = {r["storage_key"] for r in rows if r["storage_key"]}
        keys |= {r["storage_key"] for r in ref_keys}
        unused = await unused_keys(conn, keys)
        if await outbox.lock_uploading(conn, unused):
            raise ErasureBusyError(
                "An image of this submission is being copied to Spaces right now; "
                "erase it again in a minute."
            )
        await outbox.forget(conn, unused)
        if self._spaces is not None:  # else nothing was replicated
            await remember_remote(conn, unused)
        return unused, len(rows)

    async def _delete_remote(self, spaces: SpacesClient, keys: list[str]) -> None:
        from appliance.sync.spaces import is_unavailable  # botocore on demand

        async with spaces.client() as s3:
            for key in keys:
                try:
                    await s3.delete_object(Bucket=spaces.bucket, Key=key)
                except Exception as exc:
                    reason = spaces.redact(f"{type(exc).__name__}: {exc}")[:500]
                    await self._pool.execute(
                        "UPDATE pending_erasures SET attempts = attempts + 1, last_error = $2 "
                        "WHERE storage_key = $1",
                        key,
                        reason,
                    )
                    log.warning("could not delete an erased image from Spaces: %s", reason)
                    if is_unavailable(exc):
                        return
                    continue
                await self._pool.execute("DELETE FROM pending_erasures WHERE storage_key = $1", key)


async def unused_keys(conn: asyncpg.Connection, keys: Iterable[str]) -> list[str]:
    """Of `keys` (their rows already deleted or cleared), those no submission image and no
    reference uses any more: keys are content addresses, so the same bytes may be shared."""
    rows = await conn.fetch(
        "SELECT k FROM unnest($1::text[]) AS k WHERE NOT EXISTS (SELECT 1 FROM "
        "submission_images WHERE storage_key = k) AND NOT EXISTS (SELECT 1 FROM "
        "reference_images WHERE storage_key = k) ORDER BY k",
        sorted(set(keys)),
    )
    return [r["k"] for r in rows]


async def remember_remote(conn: asyncpg.Connection, keys: Sequence[str]) -> None:
    """Record Spaces copies to delete, in the transaction that erased their rows, so a copy
    is never forgotten whatever happens to Spaces or this process afterwards."""
    await conn.executemany(
        "INSERT INTO pending_erasures (storage_key) VALUES ($1) ON CONFLICT DO NOTHING",
        [(key,) for key in keys],
    )


async def remove_local_files(store: LocalImageStore, keys: Iterable[str]) -> int:
    """Delete the local copies of `keys`; returns how many were there."""

    def remove() -> int:
        removed = 0
        for key in keys:
            path = store.path(key)
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    return await asyncio.to_thread(remove)


_PENDING = "SELECT storage_key FROM pending_erasures ORDER BY created_at LIMIT 1000"
