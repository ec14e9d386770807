"""`raiox sync`'s worker: drains the outbox into Spaces, and prunes old local copies.

A worker claims one due row at a time and leases it (appliance.sync.outbox, where all of the
outbox's SQL lives): two workers never take the same row, and a worker killed mid-upload gives
its row back when the lease runs out. A slow upload keeps its lease alive with a heartbeat. A
row is marked done only once Spaces is seen to hold exactly its bytes
(appliance.sync.spaces.matches).

Two kinds of failure are kept apart. A fault of the item (local copy missing or corrupt, the
object arriving wrong) counts an attempt, backs off exponentially with full jitter and ends as
a dead letter the operator can requeue. Spaces being unreachable (network down, 5xx, refused
credentials) is no item's fault: the pass stops and the worker pauses with the same backoff,
and no item burns its attempts, so a long outage leaves a backlog, not dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from appliance.database import DB_ERRORS
from appliance.progress import Progress
from appliance.settings import SyncSettings
from appliance.storage import LocalImageStore
from appliance.sync import metrics as sync_metrics
from appliance.sync.outbox import Outbox, OutboxItem
from appliance.sync.spaces import (
    LocalCopyError,
    SpacesClient,
    VerificationError,
    is_unavailable,
    local_digest,
    matches,
)

log = logging.getLogger(__name__)

# Patient images may leave the disk once replicated; references stay (re-embedding reads them).
PRUNABLE_PREFIXES = ("clientes/", "uploads/")
PRUNE_INTERVAL_SECONDS = 3600.0


def backoff(policy: SyncSettings, failures: int) -> float:
    """Full jitter: many items (or workers) failing together spread their retries."""
    ceiling = policy.backoff_base_seconds * 2.0 ** min(max(failures - 1, 0), 40)
    return random.uniform(0, min(policy.backoff_cap_seconds, ceiling))


@dataclass
class PassResult:
    replicated: int = 0  # confirmed in Spaces and marked done
    failed: int = 0  # item faults (attempt counted)
    unavailable: str | None = None  # why the pass stopped early: Spaces unreachable


@dataclass(frozen=True)
class PruneReport:
    pruned: int = 0
    bytes_freed: int = 0
    requeued: int = 0  # done, but missing or wrong in Spaces: replicated again
    busy: bool = False  # another worker was pruning: nothing was looked at


class Replicator:
    """One worker. Several may run at once, in one process or many."""

    def __init__(
        self,
        outbox: Outbox,
        store: LocalImageStore,
        spaces: SpacesClient,
        policy: SyncSettings | None = None,
    ) -> None:
        self._outbox = outbox
        self._store = store
        self._spaces = spaces
        self.policy = policy or SyncSettings()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.uploaded: list[str] = []  # keys this worker actually sent (a retry may not send)

    async def claim(self, due_by: datetime | None = None) -> OutboxItem | None:
        """Lease the next row due by `due_by` (default: now), oldest due first."""
        return await self._outbox.claim(self.worker_id, self.policy.lease_seconds, due_by)

    async def run_once(self, progress: Callable[[int, str], Progress] | None = None) -> PassResult:
        """Replicate what is due when the pass starts (a failed item waits for a later pass);
        stops early when Spaces is unreachable."""
        result = PassResult()
        started = await self._outbox.now()
        bar = progress(await self._outbox.due(started), "sync") if progress else None
        try:
            async with self._spaces.client() as s3, asyncio.TaskGroup() as lanes:
                for _ in range(self.policy.concurrency):
                    lanes.create_task(self._lane(s3, started, result, bar))
        except ExceptionGroup as group:  # a lane lost the database; the others were cancelled
            raise group.exceptions[0] from None
        if bar:
            bar.close()
        return result

    async def run_forever(self, poll_seconds: float, retention_days: int | None = None) -> None:
        """The long-running worker: poll, pause with backoff while Spaces is unreachable,
        and prune old local copies hourly when a retention is set."""
        outages, next_prune = 0, time.monotonic()
        while True:
            delay = poll_seconds
            try:
                result = await self.run_once()
                await sync_metrics.refresh(self._outbox)
                if result.unavailable:
                    outages += 1
                    delay = max(poll_seconds, backoff(self.policy, outages))
                    log.warning(
                        "Spaces unavailable (%s); next try in %.0fs", result.unavailable, delay
                    )
                else:
                    outages = 0
                if result.replicated or result.failed:
                    log.info("replicated %d, failed %d", result.replicated, result.failed)
                if retention_days and not result.unavailable and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                    await self._prune(retention_days)
            except (*DB_ERRORS, asyncpg.PostgresError, OSError) as exc:
                log.warning("sync pass failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)

    async def _prune(self, retention_days: int) -> None:
        try:
            report = await prune_local(self._outbox, self._store, self._spaces, retention_days)
        except Exception as exc:  # pruning is housekeeping: it never stops replication
            reason = self._spaces.redact(f"{type(exc).__name__}: {exc}")[:300]
            log.warning("pruning failed, local copies kept (%s)", reason)
            return
        if report.busy:
            log.info("another worker is pruning; skipped this round")
            return
        log.info("pruned %d local copies (%d bytes)", report.pruned, report.bytes_freed)

    async def _lane(
        self, s3: Any, started: datetime, result: PassResult, bar: Progress | None
    ) -> None:
        while result.unavailable is None and (item := await self.claim(due_by=started)):
            await self._replicate(s3, item, result)
            if bar:
                bar.advance(note=item.storage_key.rsplit("/", 1)[-1][:16])

    async def _replicate(self, s3: Any, item: OutboxItem, result: PassResult) -> None:
        try:
            async with self._lease_kept(item):
                await self._push(s3, item)
        except Exception as exc:  # any failure: record it, never lose the row
            reason = self._spaces.redact(f"{type(exc).__name__}: {exc}")[:300]
            if is_unavailable(exc):
                result.unavailable = reason
                sync_metrics.FAILURES.labels("unavailable").inc()
                await self._release(item, reason)
            else:
                result.failed += 1
                sync_metrics.FAILURES.labels("item").inc()
                await self._failed(item, reason)
            return
        await self._outbox.mark_done(item)
        result.replicated += 1

    async def _push(self, s3: Any, item: OutboxItem) -> None:
        path = self._store.path(item.storage_key)
        local = await asyncio.to_thread(local_digest, path, item)
        if matches(await self._spaces.head(s3, item.storage_key), item, local):
            return  # sent before a crash, or by a worker whose lease ran out: never twice
        await self._spaces.upload(s3, item, path)
        self.uploaded.append(item.storage_key)
        remote = await self._spaces.head(s3, item.storage_key)
        if not matches(remote, item, local):
            raise VerificationError(f"Spaces holds {remote} for {item.storage_key}, not {local}")
        sync_metrics.UPLOADS.inc()
        sync_metrics.UPLOADED_BYTES.inc(item.size_bytes)

    @asynccontextmanager
    async def _lease_kept(self, item: OutboxItem) -> AsyncIterator[None]:
        heartbeat = asyncio.create_task(self._heartbeat(item))
        try:
            yield
        finally:
            heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, item: OutboxItem) -> None:
        while True:
            await asyncio.sleep(self.policy.lease_seconds / 3)
            try:
                await self._outbox.renew_lease(item, self.worker_id, self.policy.lease_seconds)
            except (*DB_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("could not extend a lease (%s)", type(exc).__name__)

    async def _failed(self, item: OutboxItem, reason: str) -> None:
        attempts = item.attempts + 1
        dead = attempts >= self.policy.max_attempts
        if dead:
            sync_metrics.DEAD_LETTERED.inc()
            log.error("replication of %s gave up after %d attempts", item.storage_key, attempts)
        delay = backoff(self.policy, attempts)
        await self._outbox.mark_failed(item, self.worker_id, attempts, dead, reason, delay)

    async def _release(self, item: OutboxItem, reason: str) -> None:
        """Due again at once, behind the older backlog; the worker's pause is the backoff."""
        await self._outbox.release(item, self.worker_id, reason)


async def prune_local(
    outbox: Outbox,
    store: LocalImageStore,
    spaces: SpacesClient,
    retention_days: int,
    progress: Callable[[int, str], Progress] | None = None,
) -> PruneReport:
    """Delete local copies of patient images replicated more than `retention_days` ago, each
    only after Spaces is seen to hold exactly its bytes; one found missing is replicated
    again instead. Raises when Spaces is unreachable (nothing is deleted blind). One caller
    at a time: while another (a worker replica, an operator) prunes, returns `busy`."""
    async with outbox.pruning() as mine:
        if not mine:
            return PruneReport(busy=True)
        return await _prune_all(outbox, store, spaces, retention_days, progress)


async def _prune_all(
    outbox: Outbox,
    store: LocalImageStore,
    spaces: SpacesClient,
    retention_days: int,
    progress: Callable[[int, str], Progress] | None,
) -> PruneReport:
    items = await outbox.prunable(retention_days, PRUNABLE_PREFIXES)
    pruned = freed = requeued = 0
    bar = progress(len(items), "prune") if progress else None
    async with spaces.client() as s3:
        for item in items:
            if await _prune_one(outbox, store, spaces, s3, item):
                pruned, freed = pruned + 1, freed + item.size_bytes
            else:
                requeued += 1
            if bar:
                bar.advance()
    if bar:
        bar.close()
    return PruneReport(pruned, freed, requeued)


async def _prune_one(
    outbox: Outbox, store: LocalImageStore, spaces: SpacesClient, s3: Any, item: OutboxItem
) -> bool:
    path = store.path(item.storage_key)
    remote = await spaces.head(s3, item.storage_key)
    try:
        held = matches(remote, item, await asyncio.to_thread(local_digest, path, item))
    except LocalCopyError:  # gone or corrupt locally: only the replica's own word is left
        held = remote is not None and (remote.size, remote.sha256) == (item.size_bytes, item.sha256)
    if not held:
        await outbox.replicate_again(item, "not found intact in Spaces when pruning")
        return False
    await asyncio.to_thread(path.unlink, missing_ok=True)
    await outbox.mark_pruned(item)
    return True
