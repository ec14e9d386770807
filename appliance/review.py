"""Submissions as staff review them: a filtered list, and the same rows as CSV.

Filters are what a clinic asks ("yesterday's failures", "everything for tooth 36 from the
form"): a date range, status, source and tooth. The CSV holds what the list shows plus the
top-3 and the confirmed label; it carries the dentist's and the patient's names, so only an
admin may export it (the console checks).
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

PAGE_SIZE = 50
EXPORT_MAX_ROWS = 100_000
STATUSES = ("received", "processing", "done", "failed")
SOURCES = ("upload", "jotform", "webhook", "cli")


@dataclass(frozen=True)
class SubmissionFilter:
    since: date | None = None
    until: date | None = None  # inclusive
    status: str = ""
    source: str = ""
    tooth: str = ""
    offset: int = 0


@dataclass(frozen=True)
class SubmissionRow:
    id: uuid.UUID
    created_at: datetime
    source: str
    status: str
    tooth: str | None
    dentist_name: str | None
    patient_name: str | None
    images: int
    top1: str | None
    label: str | None
    error: str | None


async def find(pool: asyncpg.Pool, wanted: SubmissionFilter) -> tuple[list[SubmissionRow], int]:
    async with pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM submissions s {_WHERE}", *_args(wanted))
        rows = await conn.fetch(
            f"{_SELECT} {_WHERE} ORDER BY s.created_at DESC LIMIT {PAGE_SIZE} OFFSET $6",
            *_args(wanted),
            wanted.offset,
        )
    return [SubmissionRow(**dict(r)) for r in rows], total


async def export_csv(pool: asyncpg.Pool, wanted: SubmissionFilter) -> str:
    rows = await pool.fetch(
        f"{_SELECT} {_WHERE} ORDER BY s.created_at DESC LIMIT {EXPORT_MAX_ROWS}", *_args(wanted)
    )
    out = io.StringIO()
    writer = csv.writer(out)
    columns = list(SubmissionRow.__dataclass_fields__)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return out.getvalue()


def _args(wanted: SubmissionFilter) -> tuple[object, ...]:
    until = wanted.until + timedelta(days=1) if wanted.until else None
    return (wanted.since, until, wanted.status, wanted.source, wanted.tooth.strip())


_WHERE = (
    "WHERE ($1::date IS NULL OR s.created_at >= $1::date) "
    "AND ($2::date IS NULL OR s.created_at < $2::date) "
    "AND ($3 = '' OR s.status = $3) AND ($4 = '' OR s.source = $4) "
    "AND ($5 = '' OR s.tooth = $5)"
)

_SELECT = """
SELECT s.id, s.created_at, s.source, s.status, s.tooth, s.dentist_name, s.patient_name,
       s.error,
       (SELECT count(*) FROM submission_images si WHERE si.submission_id = s.id) AS images,
       (SELECT i.manufacturer || ' ' || i.name FROM submission_images si
          JOIN matches m ON m.submission_image_id = si.id AND m.rank = 1
          JOIN implants i ON i.id = m.implant_id
        WHERE si.submission_id = s.id ORDER BY si.position LIMIT 1) AS top1,
       (SELECT i.manufacturer || ' ' || i.name FROM submission_images si
          JOIN image_labels l ON l.submission_image_id = si.id
          JOIN implants i ON i.id = l.implant_id
        WHERE si.submission_id = s.id ORDER BY si.position LIMIT 1) AS label
FROM submissions s
"""
