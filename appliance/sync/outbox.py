"""The replication outbox: the one place its SQL lives.

A row is written in the same transaction as the row that references an image (`enqueue`, or
`ENQUEUE` inside a larger statement), so an image the database knows about is always queued
for Spaces. Workers lease rows with `FOR UPDATE SKIP LOCKED` (`Outbox.claim`): two workers
never take the same row, and a worker killed mid-upload gives its row back when the lease
runs out. Pruning takes a session advisory lock (`Outbox.pruning`): of several workers, one
prunes at a time and the others skip that round. Operators read its state (`status`) and give
dead letters another go (`requeue_dead`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from appliance.storage import StoredObject

# The insert, for callers that queue an image inside a statement of their own (a data-modifying
# CTE): $key, $sha256, $size and $content_type name that statement's parameters.
ENQUEUE = (
    "INSERT INTO outbox (storage_key, sha256, size_bytes, content_type) "
    "VALUES ({key}, {sha256}, {size}, {content_type}) ON CONFLICT (storage_key) DO NOTHING"
)


async def enqueue(conn: asyncpg.Connection, obj: StoredObject) -> None:
    """Queue `obj` for replication, on the caller's connection (inside its transaction)."""
    statement = ENQUEUE.format(key="$1", sha256="$2", size="$3", content_type="$4")
    await conn.execute(statement, obj.key, obj.sha256, obj.size, obj.content_type)


async def lock_uploading(conn: asyncpg.Connection, keys: Sequence[str]) -> set[str]:
    """Lock the rows of `keys` until the caller's transaction ends (a worker's claim skips a
    locked row, so none starts uploading one meanwhile) and return the keys a worker is
    uploading right now (leased, lease not run out): an erasure must leave those alone, or the
    upload would re-create the object after its delete."""
    rows = await conn.fetch(
        "SELECT storage_key, state = 'pending' AND lease_owner IS NOT NULL "
        "AND next_attempt_at > now() AS busy FROM outbox "
        "WHERE storage_key = ANY($1::text[]) ORDER BY storage_key FOR UPDATE",
        list(keys),
    )
    return {r["storage_key"] for r in rows if r["busy"]}


async def forget(conn: asyncpg.Connection, keys: Sequence[str]) -> None:
    """Stop replicating `keys` (their images were erased), inside the caller's transaction."""
    await conn.execute("DELETE FROM outbox WHERE storage_key = ANY($1::text[])", list(keys))


@dataclass(frozen=True)
class OutboxItem:
    id: int
    storage_key: str
    sha256: str
    size_bytes: int
    content_type: str
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    storage_key: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class SyncStatus:
    pending: int
    due: int
    done: int
    pruned: int
    oldest_pending: datetime | None
    oldest_pending_age_seconds: float | None
    last_error: str | None  # of the most recently retried pending item: why the backlog grows
    dead: list[DeadLetter]


_ITEM = "id, storage_key, sha256, size_bytes, content_type, attempts"
# "A worker is pruning local copies" (distinct from the migration lock in appliance.database).
PRUNE_LOCK_ID = 0x5241494F59


class Outbox:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def now(self) -> datetime:
        """The database's clock: leases and due times are compared on it, never the host's."""
        now: datetime = await self._pool.fetchval("SELECT now()")
        return now

    async def claim(
        self, worker_id: str, lease_seconds: float, due_by: datetime | None = None
    ) -> OutboxItem | None:
        """Lease the next row due by `due_by` (default: now), oldest due first."""
        row = await self._pool.fetchrow(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2), "
            "lease_owner = $1 WHERE id = (SELECT id FROM outbox WHERE state = 'pending' "
            "AND next_attempt_at <= coalesce($3, now()) ORDER BY next_attempt_at, id LIMIT 1 "
            f"FOR UPDATE SKIP LOCKED) RETURNING {_ITEM}",
            worker_id,
            lease_seconds,
            due_by,
        )
        return OutboxItem(**dict(row)) if row else None

    async def due(self, by: datetime) -> int:
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1", by
        )
        return count

    async def renew_lease(self, item: OutboxItem, worker_id: str, lease_seconds: float) -> None:
        await self._pool.execute(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            item.id,
            worker_id,
            lease_seconds,
        )

    async def mark_done(self, item: OutboxItem) -> None:
        await self._pool.execute(
            "UPDATE outbox SET state = 'done', done_at = now(), last_error = NULL, "
            "lease_owner = NULL WHERE id = $1",
            item.id,
        )

    async def mark_failed(
        self, item: OutboxItem, worker_id: str, attempts: int, dead: bool, reason: str, delay: float
    ) -> None:
        """An item fault: one more attempt counted, due again after `delay` (or dead)."""
        await self._pool.execute(
            "UPDATE outbox SET attempts = $3, state = $4, last_error = $5, lease_owner = NULL, "
            "next_attempt_at = now() + make_interval(secs => $6) "
            "WHERE id = $1 AND lease_owner = $2",
            item.id,
            worker_id,
            attempts,
            "dead" if dead else "pending",
            reason,
            delay,
        )

    async def release(self, item: OutboxItem, worker_id: str, reason: str) -> None:
        """Due again at once, behind the older backlog; no attempt counted."""
        await self._pool.execute(
            "UPDATE outbox SET next_attempt_at = now(), last_error = $3, lease_owner = NULL "
            "WHERE id = $1 AND lease_owner = $2",
            item.id,
            worker_id,
            reason,
        )

    async def prunable(self, retention_days: int, prefixes: Sequence[str]) -> list[OutboxItem]:
        """Replicated rows older than `retention_days` under `prefixes`, not yet pruned."""
        rows = await self._pool.fetch(
            f"SELECT {_ITEM} FROM outbox "
            "WHERE state = 'done' AND local_pruned_at IS NULL "
            "AND created_at < now() - make_interval(days => $1) "
            "AND split_part(storage_key, '/', 1) || '/' = ANY($2::text[]) ORDER BY id",
            retention_days,
            list(prefixes),
        )
        return [OutboxItem(**dict(row)) for row in rows]

    @asynccontextmanager
    async def pruning(self) -> AsyncIterator[bool]:
        """Yields whether this caller may prune now: True for one holder at a time (the lock
        lives with its connection, so a worker that dies gives it back at once)."""
        async with self._pool.acquire() as conn:
            held: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK_ID)
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK_ID)

    async def mark_pruned(self, item: OutboxItem) -> None:
        await self._pool.execute("UPDATE outbox SET local_pruned_at = now() WHERE id = $1", item.id)

    async def replicate_again(self, item: OutboxItem, reason: str) -> None:
        """A done row whose replica is missing or wrong: pending again, with fresh attempts."""
        await self._pool.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(), "
            "done_at = NULL, last_error = $2 WHERE id = $1 AND state = 'done'",
            item.id,
            reason,
        )

    async def status(self) -> SyncStatus:
        row = await self._pool.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, "
            "count(*) FILTER (WHERE state = 'pending' AND next_attempt_at <= now()) AS due, "
            "count(*) FILTER (WHERE state = 'done') AS done, "
            "count(*) FILTER (WHERE local_pruned_at IS NOT NULL) AS pruned, "
            "min(created_at) FILTER (WHERE state = 'pending') AS oldest, "
            "extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')) AS age "
            "FROM outbox"
        )
        last_error = await self._pool.fetchval(
            "SELECT last_error FROM outbox WHERE state = 'pending' AND last_error IS NOT NULL "
            "ORDER BY next_attempt_at DESC LIMIT 1"
        )
        dead = await self._pool.fetch(
            "SELECT storage_key, attempts, last_error FROM outbox WHERE state = 'dead' ORDER BY id"
        )
        return SyncStatus(
            pending=row["pending"],
            due=row["due"],
            done=row["done"],
            pruned=row["pruned"],
            oldest_pending=row["oldest"],
            oldest_pending_age_seconds=float(row["age"]) if row["age"] is not None else None,
            last_error=last_error,
            dead=[DeadLetter(r["storage_key"], r["attempts"], r["last_error"]) for r in dead],
        )

    async def requeue_dead(self, keys: Sequence[str] | None = None) -> int:
        """Give dead letters (all, or those of `keys`) a fresh set of attempts."""
        result: str = await self._pool.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now() "
            "WHERE state = 'dead' AND ($1::text[] IS NULL OR storage_key = ANY($1::text[]))",
            list(keys) if keys is not None else None,
        )
        return int(result.split()[-1])
