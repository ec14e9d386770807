"""The audit log: who created, changed, confirmed or erased what, and when.

Written in the same transaction as the change it describes, so the log never claims a change
that was rolled back nor misses one that was made. `detail` holds ids, names of catalog
entries and counts, never patient data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None


async def record(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4::jsonb)",
        actor,
        action,
        target,
        None if detail is None else json.dumps(detail, default=str),
    )


async def recent(
    pool: asyncpg.Pool, *, limit: int = 100, offset: int = 0, target: str | None = None
) -> list[AuditEntry]:
    rows = await pool.fetch(
        "SELECT id, at, actor, action, target, detail::text AS detail FROM audit_log "
        "WHERE $3::text IS NULL OR target = $3 ORDER BY id DESC LIMIT $1 OFFSET $2",
        limit,
        offset,
        target,
    )
    return [
        AuditEntry(
            r["id"],
            r["at"],
            r["actor"],
            r["action"],
            r["target"],
            None if r["detail"] is None else dict(json.loads(r["detail"])),
        )
        for r in rows
    ]
