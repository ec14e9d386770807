"""The replication outbox: rows written in the same transaction as the row that references an
image, so an image the database knows about is always queued for Spaces."""

from __future__ import annotations

import asyncpg

from appliance.storage import StoredObject


async def enqueue(conn: asyncpg.Connection, obj: StoredObject) -> None:
    await conn.execute(
        "INSERT INTO outbox (storage_key, sha256, size_bytes, content_type) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (storage_key) DO NOTHING",
        obj.key,
        obj.sha256,
        obj.size,
        obj.content_type,
    )
