"""Restoring a backup: verify the dump against its manifest, refuse a target holding data
unless forced, pg_restore in one transaction, migrate, compare the row counts."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from appliance.backup.archive import BackupManifest, RestoreRefusedError, file_sha256
from appliance.backup.common import (
    MIGRATIONS_TABLE,
    ProgressFactory,
    default_progress,
    row_counts,
    table_names,
)
from appliance.backup.pgtools import (
    Connection,
    PgTool,
    connection,
    find_tool,
    list_archive,
    needs_tls,
    run_tool,
)
from appliance.database import apply_migrations, load_migrations

_RESTORE_TABLE = re.compile(r'processing data for table "(?:public\.)?([^"]+)"')

# The extension is infrastructure, created by migration 001 with the privileges the appliance
# normally has; restoring it would need to own it (DROP/COMMENT ON EXTENSION).
_EXTENSION_ENTRY = re.compile(r"^\d+; \d+ \d+ (?:EXTENSION|COMMENT - EXTENSION) ")


@dataclass(frozen=True)
class TableCount:
    table: str
    expected: int | None  # None: not in the backup (a table a newer migration created)
    restored: int

    @property
    def ok(self) -> bool:
        return self.expected is None or self.expected == self.restored


@dataclass(frozen=True)
class RestoreReport:
    manifest: BackupManifest
    migrations_applied: list[str]
    counts: list[TableCount]
    # Images the restored rows refer to that are neither on this disk nor replicated to
    # Spaces (None: not checked). The dump holds no image files.
    images_missing: int | None = None

    @property
    def mismatches(self) -> list[TableCount]:
        migrated = bool(self.migrations_applied)
        return [
            c for c in self.counts if not c.ok and not (migrated and c.table == MIGRATIONS_TABLE)
        ]


def resolve(file: Path) -> tuple[Path, BackupManifest]:
    """The dump and its manifest from either of them (or from latest.json)."""
    if file.suffix == ".json":
        manifest = BackupManifest.load(file)
        return file.parent / manifest.dump_file, manifest
    return file, BackupManifest.load(file.with_suffix(".json"))


def verify(dump: Path, manifest: BackupManifest) -> None:
    """Refuse a dump that is not byte for byte the one its manifest describes."""
    if not dump.is_file():
        raise RestoreRefusedError(f"{dump} does not exist")
    sha256, size = file_sha256(dump)
    if (sha256, size) != (manifest.dump_sha256, manifest.dump_size_bytes):
        raise RestoreRefusedError(
            f"{dump.name} does not match its manifest (sha256 {sha256[:12]}…, {size} bytes; "
            f"expected {manifest.dump_sha256[:12]}…, {manifest.dump_size_bytes} bytes): "
            "it is damaged or was altered; nothing was restored"
        )
    newest = max((m.version for m in load_migrations()), default=0)
    if manifest.schema_version > newest:
        raise RestoreRefusedError(
            f"the backup has schema version {manifest.schema_version}, newer than this "
            f"appliance's {newest}: restore it with appliance {manifest.appliance_version}"
        )


async def restore_backup(
    url: str,
    file: Path,
    *,
    force: bool = False,
    images_dir: Path | None = None,
    progress: ProgressFactory = default_progress,
) -> RestoreReport:
    dump, manifest = resolve(file)
    await asyncio.to_thread(verify, dump, manifest)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await _prepare_target(conn, manifest, force=force)
        tool = find_tool("pg_restore", manifest.pg_dump_major, tls=needs_tls(url))
        await _run_pg_restore(tool, url, dump, manifest, progress)
    finally:
        await conn.close()
    # A fresh connection: the restore re-created the tables (and their type oids).
    conn = await asyncpg.connect(url, timeout=10)
    try:
        applied = await apply_migrations(conn)
        counts = await row_counts(conn)
        missing = None if images_dir is None else await _images_missing(conn, images_dir)
    finally:
        await conn.close()
    return RestoreReport(
        manifest,
        applied,
        [TableCount(t, manifest.tables.get(t), n) for t, n in sorted(counts.items())],
        missing,
    )


async def _images_missing(conn: asyncpg.Connection, images_dir: Path) -> int:
    rows = await conn.fetch(
        "SELECT k.storage_key FROM (SELECT storage_key FROM reference_images UNION "
        "SELECT storage_key FROM submission_images WHERE storage_key IS NOT NULL) k "
        "WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.storage_key = k.storage_key "
        "AND o.state = 'done')"
    )
    keys = [r["storage_key"] for r in rows]
    return await asyncio.to_thread(lambda: sum(not (images_dir / k).is_file() for k in keys))


async def _prepare_target(
    conn: asyncpg.Connection, manifest: BackupManifest, *, force: bool
) -> None:
    """Refuse a target holding data unless forced: a restore replaces whatever it finds, and
    a mistyped RAIOX_DATABASE_URL must not cost a clinic its records. A target with only
    empty tables (an appliance that started once and migrated) is fine."""
    tables = await table_names(conn)
    filled = [t for t in tables if t != MIGRATIONS_TABLE and await _has_rows(conn, t)]
    if filled and not force:
        raise RestoreRefusedError(
            f"the target database holds data (tables {', '.join(filled)}); restore into an "
            "empty database, or pass --force to replace its contents with the backup"
        )
    # Tables the backup does not have (a newer migration's) would make this version's
    # migrations fail after the restore; the backup's state is what was asked for.
    extra = [t for t in tables if t not in manifest.tables]
    async with conn.transaction():
        for table in extra:
            await conn.execute(f'DROP TABLE public."{table}" CASCADE')
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


async def _has_rows(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM public."{table}")'))


async def _run_pg_restore(
    tool: PgTool, url: str, dump: Path, manifest: BackupManifest, progress: ProgressFactory
) -> None:
    conn = connection(url)
    listing = await asyncio.to_thread(_restore_list, tool, dump, conn)
    try:
        bar = progress(len(manifest.tables), "restore")

        def on_line(line: str) -> bool:
            found = _RESTORE_TABLE.search(line)
            if found:
                bar.advance(note=found.group(1))
            return found is not None

        args = [
            "--single-transaction",  # all or nothing: a failure leaves the target as it was
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--verbose",
            f"--use-list={listing}",
            f"--dbname={conn.dsn}",
            str(dump),
        ]
        try:
            await run_tool(tool, args, conn, on_progress=on_line)
        finally:
            bar.close()
    finally:
        await asyncio.to_thread(listing.unlink, missing_ok=True)


def _restore_list(tool: PgTool, dump: Path, conn: Connection) -> Path:
    """The archive's table of contents without the extension's entries, as a file."""
    toc = list_archive(tool, dump, conn)
    fd, name = tempfile.mkstemp(prefix="raiox-restore-", suffix=".list")
    with os.fdopen(fd, "w") as f:
        f.write("".join(line for line in toc if not _EXTENSION_ENTRY.match(line)))
    return Path(name)
