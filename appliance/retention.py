"""Patient-data retention (RAIOX_RETENTION_DAYS, off by default): the personal data of
submissions older than N days is erased, locally and in Spaces, while what the appliance learns
from them stays (LGPD's data minimisation: keep no more than the purpose needs).

Erased: the radiographs (local files and Spaces copies), the patient's and the dentist's names
and e-mail, the dentist's pseudonymous client id, the delivery's external id (Jotform's
submission id or the client's Idempotency-Key, which lead back to the form's copy), the
delivery payload and each image's upload URL and digest. Kept: the submission row (source,
status, tooth, dates, result token, error), its matches, the confirmed labels, hence the
accuracy statistics, and the audit log, with `personal_data_erased_at` set. A radiograph staff
promoted to a catalog reference is a copy under its own key that stays as catalog data (the
console's erasure removes it; the retention does not).

It reuses appliance.erasure's rules: content-addressed files another submission or a reference
still uses stay; Spaces copies to delete are recorded in `pending_erasures` in the same
transaction (an unreachable Spaces leaves them there for the next run or erasure); an image
the sync worker is uploading right now is left for the next run; erased keys leave the outbox.

Runs go in batches of one transaction each, oldest first, so a large backlog is never one
giant transaction, and any crash leaves a state the next run simply continues: local files are
deleted just before their batch commits (a failed commit leaves rows that still name a
missing file, and the next run erases them), never after (a crash would leave a file no row
names). A submission being processed right now is skipped, and cannot be retried once erased.

Where it runs: every api process (`raiox serve`, `raiox demo`) and every `raiox sync` worker
checks every few minutes whether a run is due; `retention_state` lets one of them run it once
per hour between them, and batches lock their submissions with SKIP LOCKED, so runs that do
overlap (`raiox retention run` by hand) split the work instead of repeating it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from appliance import metrics
from appliance.audit import record
from appliance.erasure import Erasure, remember_remote, remove_local_files, unused_keys
from appliance.storage import LocalImageStore
from appliance.sync import outbox

log = logging.getLogger(__name__)

ACTOR = "retention"
BATCH_SIZE = 500  # submissions per transaction
RUN_INTERVAL_SECONDS = 3600.0  # a run per hour, among all the processes that run it
CHECK_SECONDS = 300.0  # how often each process looks whether a run is due
# A submission 'received' or 'processing' more recently than this is being worked on (the
# same bound SubmissionRepository.reopen uses to call one abandoned).
IN_FLIGHT_SECONDS = 600.0


@dataclass(frozen=True)
class RetentionReport:
    days: int
    dry_run: bool
    submissions: int = 0  # whose personal data was (or would be) erased
    images: int = 0  # their images
    local_files: int = 0  # image files deleted from this disk
    spaces_copies: int = 0  # Spaces copies to delete (erased images that were replicated)
    spaces_pending: int = 0  # Spaces copies still to delete after the run (Spaces unreachable)
    deferred: int = 0  # skipped: an image was being uploaded to Spaces; the next run takes them

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """The run's log line: counts only, never a patient's or a submission's id."""
        verb = "would erase" if self.dry_run else "erased"
        return (
            f"retention: {verb} the personal data of {self.submissions} submissions older than "
            f"{self.days} days ({self.images} images, {self.local_files} local files, "
            f"{self.spaces_copies} Spaces copies; {self.spaces_pending} Spaces copies still to "
            f"delete, {self.deferred} submissions deferred)"
        )


@dataclass
class _Batch:
    submissions: int
    images: int
    local_files: int
    spaces_copies: int


class Retention:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: LocalImageStore,
        erasure: Erasure,
        *,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._pool = pool
        self._store = store
        self._erasure = erasure
        self._batch_size = batch_size

    async def run(self, days: int, *, dry_run: bool = False) -> RetentionReport:
        """Erase what is older than `days` now (`raiox retention run`); a dry run only counts."""
        if days < 1:
            raise ValueError("a retention of at least one day")
        if dry_run:
            report = await self._preview(days)
        else:
            await self._claim(None)
            report = await self._erase(days)
        _log(report)
        return report

    async def run_if_due(self, days: int, interval_seconds: float) -> RetentionReport | None:
        """Run unless some process started a run less than `interval_seconds` ago."""
        if not await self._claim(interval_seconds):
            return None
        report = await self._erase(days)
        _log(report)
        return report

    async def refresh_metrics(self) -> None:
        """The last-run gauge from the database, which every process running it shares."""
        finished = await self._pool.fetchval("SELECT last_finished_at FROM retention_state")
        metrics.RETENTION_LAST_RUN.set(finished.timestamp() if finished else 0.0)

    async def _claim(self, interval_seconds: float | None) -> datetime | None:
        """Mark a run as started; with an interval, only if none started within it. Atomic:
        of several processes claiming together, one gets it."""
        started: datetime | None = await self._pool.fetchval(
            "INSERT INTO retention_state (last_started_at) VALUES (now()) "
            "ON CONFLICT (id) DO UPDATE SET last_started_at = now() "
            "WHERE $1::float8 IS NULL "
            "OR retention_state.last_started_at <= now() - make_interval(secs => $1) "
            "RETURNING last_started_at",
            interval_seconds,
        )
        return started

    async def _erase(self, days: int) -> RetentionReport:
        totals = _Batch(0, 0, 0, 0)
        deferred: list[uuid.UUID] = []
        while (batch := await self._erase_batch(days, deferred)) is not None:
            totals.submissions += batch.submissions
            totals.images += batch.images
            totals.local_files += batch.local_files
            totals.spaces_copies += batch.spaces_copies
        report = RetentionReport(
            days,
            dry_run=False,
            submissions=totals.submissions,
            images=totals.images,
            local_files=totals.local_files,
            spaces_copies=totals.spaces_copies,
            spaces_pending=await self._delete_remote(),
            deferred=len(deferred),
        )
        await self._finish(report)
        return report

    async def _erase_batch(self, days: int, deferred: list[uuid.UUID]) -> _Batch | None:
        """One transaction: the oldest due submissions not locked by another run; None when
        none is left. Submissions whose image is being uploaded join `deferred`."""
        async with self._pool.acquire() as conn, conn.transaction():
            ids = [
                r["id"]
                for r in await conn.fetch(
                    _DUE + " ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED",
                    days,
                    IN_FLIGHT_SECONDS,
                    deferred,
                    self._batch_size,
                )
            ]
            if not ids:
                return None
            images = await conn.fetch(
                "SELECT submission_id, storage_key FROM submission_images "
                "WHERE submission_id = ANY($1::uuid[])",
                ids,
            )
            busy = await outbox.lock_uploading(
                conn, sorted({r["storage_key"] for r in images if r["storage_key"]})
            )
            if busy:
                held = {r["submission_id"] for r in images if r["storage_key"] in busy}
                deferred.extend(held)
                ids = [i for i in ids if i not in held]
                images = [r for r in images if r["submission_id"] not in held]
            await conn.execute(_ERASE_IMAGES, ids)
            await conn.execute(_ERASE_SUBMISSIONS, ids)
            unused = await unused_keys(conn, (r["storage_key"] for r in images if r["storage_key"]))
            await outbox.forget(conn, unused)
            if self._erasure.replicated:
                await remember_remote(conn, unused)
            # Before the commit: if it fails, the rows are erased again by the next run.
            removed = await remove_local_files(self._store, unused)
        copies = len(unused) if self._erasure.replicated else 0
        return _Batch(len(ids), len(images), removed, copies)

    async def _delete_remote(self) -> int:
        """Delete the Spaces copies recorded for deletion (erasure's retry list, 1000 a go)
        while that makes progress; returns how many remain."""
        remaining = await self._erasure.pending()
        while remaining:
            left = await self._erasure.retry_remote()
            if left >= remaining:
                break  # Spaces unreachable, or refusing these keys: the next run tries again
            remaining = left
        return remaining

    async def _finish(self, report: RetentionReport) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE retention_state SET last_finished_at = now()")
            if report.submissions:  # a run that erased nothing changed nothing to audit
                detail = {k: v for k, v in report.as_json().items() if k != "dry_run"}
                await record(conn, ACTOR, "retention.run", "submissions", detail)
        metrics.RETENTION_SUBMISSIONS.inc(report.submissions)
        metrics.RETENTION_IMAGES.inc(report.images)
        await self.refresh_metrics()

    async def _preview(self, days: int) -> RetentionReport:
        """What a run would erase now, read without locking or changing anything."""
        row = await self._pool.fetchrow(_PREVIEW, days, IN_FLIGHT_SECONDS, [])
        keys: list[str] = list(row["keys"])
        on_disk = await asyncio.to_thread(lambda: sum(self._store.exists(k) for k in keys))
        return RetentionReport(
            days,
            dry_run=True,
            submissions=row["submissions"],
            images=row["images"],
            local_files=on_disk,
            spaces_copies=len(keys) if self._erasure.replicated else 0,
            spaces_pending=await self._erasure.pending(),
        )


def _log(report: RetentionReport) -> None:
    """One line per run, with the counts also as a field for log queries."""
    log.info("%s", report.line(), extra={"retention": report.as_json()})


async def retention_forever(
    retention: Retention,
    days: int,
    *,
    check_seconds: float = CHECK_SECONDS,
    interval_seconds: float = RUN_INTERVAL_SECONDS,
) -> None:
    """The periodic runs of a long-lived process (api, sync worker): a failed run (database
    away) is logged and tried again at the next check, never stopping the process."""
    while True:
        try:
            await retention.run_if_due(days, interval_seconds)
            await retention.refresh_metrics()
        except Exception as exc:
            reason = type(exc).__name__
            log.warning("retention run failed (%s); next check in %.0fs", reason, check_seconds)
        await asyncio.sleep(check_seconds)


# Due: older than $1 days, not erased, not being processed right now ($2 s), not deferred ($3).
_DUE = (
    "SELECT id FROM submissions WHERE personal_data_erased_at IS NULL "
    "AND created_at < now() - make_interval(days => $1) "
    "AND NOT (status IN ('received', 'processing') "
    "AND updated_at > now() - make_interval(secs => $2)) "
    "AND id <> ALL($3::uuid[])"
)
_ERASE_IMAGES = (
    "UPDATE submission_images SET storage_key = NULL, sha256 = NULL, source_url = NULL "
    "WHERE submission_id = ANY($1::uuid[])"
)
_ERASE_SUBMISSIONS = (
    "UPDATE submissions SET dentist_name = NULL, dentist_email = NULL, patient_name = NULL, "
    "client_id = NULL, external_id = NULL, payload = NULL, personal_data_erased_at = now() "
    "WHERE id = ANY($1::uuid[])"
)
_PREVIEW = f"""
WITH due AS ({_DUE}),
images AS (SELECT si.storage_key FROM submission_images si JOIN due ON due.id = si.submission_id)
SELECT (SELECT count(*) FROM due) AS submissions,
       (SELECT count(*) FROM images) AS images,
       ARRAY(SELECT DISTINCT i.storage_key FROM images i WHERE i.storage_key IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM submission_images o WHERE o.storage_key = i.storage_key
                             AND o.submission_id NOT IN (SELECT id FROM due))
             AND NOT EXISTS (SELECT 1 FROM reference_images r
                             WHERE r.storage_key = i.storage_key)) AS keys
"""
