"""What taking and restoring a backup share: the schema's tables and their exact counts, and
the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import asyncpg

from appliance.progress import Progress

MIGRATIONS_TABLE = "schema_migrations"

ProgressFactory = Callable[[int, str], Progress]


def default_progress(total: int, label: str) -> Progress:
    return Progress(total, label)


async def table_names(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    return [r["tablename"] for r in rows]


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Exact counts of every table of the appliance's schema."""
    counts = {}
    for table in await table_names(conn):
        counts[table] = int(await conn.fetchval(f'SELECT count(*) FROM public."{table}"'))
    return counts


async def applied_schema_version(conn: asyncpg.Connection, tables: Iterable[str]) -> int:
    if MIGRATIONS_TABLE not in tables:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def server_major(conn: asyncpg.Connection) -> tuple[int, str]:
    version = str(await conn.fetchval("SHOW server_version"))
    return int(await conn.fetchval("SHOW server_version_num")) // 10000, version.split()[0]
