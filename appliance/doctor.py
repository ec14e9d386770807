"""`raiox doctor` (also run at every start): reconcile the image files on disk with the rows
that refer to them, and say what it found.

- A file no row refers to (a request failed between storing and recording, before requests
  cleaned up after themselves; a crash) is patient data nothing would ever replicate or
  remove: it is deleted. Files younger than the grace period are left alone, since a request
  in flight writes its file just before its row.
- A pending outbox row whose file is gone can never be replicated: it becomes a dead letter
  with the reason, instead of being retried forever.
- A row whose file is gone, neither on disk nor replicated, is reported (nothing can bring
  the image back; `raiox submissions retry` re-fetches what came by URL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from appliance.storage import LocalImageStore

log = logging.getLogger(__name__)

GRACE_SECONDS = 3600.0
MISSING_REASON = "local file missing (raiox doctor)"


@dataclass
class DoctorReport:
    files_seen: int = 0
    orphans_removed: list[str] = field(default_factory=list)
    outbox_dead_lettered: list[str] = field(default_factory=list)
    rows_without_files: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphans_removed or self.outbox_dead_lettered or self.rows_without_files)

    def lines(self) -> list[str]:
        return [
            f"{self.files_seen} image files checked",
            f"{len(self.orphans_removed)} files without a row removed",
            f"{len(self.outbox_dead_lettered)} outbox rows for missing files dead-lettered",
            f"{len(self.rows_without_files)} rows whose image is neither on disk nor in Spaces",
        ]


async def _known_keys(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT storage_key FROM reference_images "
        "UNION SELECT storage_key FROM submission_images WHERE storage_key IS NOT NULL "
        "UNION SELECT storage_key FROM outbox"
    )
    return {r["storage_key"] for r in rows}


def _files(root: Path, older_than: float) -> tuple[int, list[str]]:
    """(files seen, keys of those last changed before `older_than`), temp files skipped."""
    seen, old = 0, []
    for path in root.rglob("*"):
        if not path.is_file() or path.name.startswith(".tmp-"):
            continue
        seen += 1
        if path.stat().st_mtime < older_than:
            old.append(path.relative_to(root).as_posix())
    return seen, old


async def reconcile(
    pool: asyncpg.Pool, store: LocalImageStore, *, grace_seconds: float = GRACE_SECONDS
) -> DoctorReport:
    report = DoctorReport()
    # Keys are read after the file listing: a file recorded meanwhile is then known.
    report.files_seen, candidates = await asyncio.to_thread(
        _files, store.root, time.time() - grace_seconds
    )
    known = await _known_keys(pool)
    for key in candidates:
        if key not in known:
            await asyncio.to_thread(store.path(key).unlink, True)
            report.orphans_removed.append(key)

    pending = await pool.fetch(
        "SELECT storage_key FROM outbox WHERE state = 'pending' AND local_pruned_at IS NULL"
    )
    for row in pending:
        key = row["storage_key"]
        if not await asyncio.to_thread(store.exists, key):
            await pool.execute(
                "UPDATE outbox SET state = 'dead', last_error = $2, lease_owner = NULL "
                "WHERE storage_key = $1 AND state = 'pending'",
                key,
                MISSING_REASON,
            )
            report.outbox_dead_lettered.append(key)

    replicated = {
        r["storage_key"]
        for r in await pool.fetch("SELECT storage_key FROM outbox WHERE state = 'done'")
    }
    for key in sorted(known - replicated):
        if not await asyncio.to_thread(store.exists, key):
            report.rows_without_files.append(key)

    level = logging.INFO if report.clean else logging.WARNING
    log.log(level, "doctor: %s", "; ".join(report.lines()))  # counts only: keys carry ids
    return report
