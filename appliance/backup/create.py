"""Taking a backup: pg_dump from an exported snapshot, manifest, latest.json, retention, and
the private copy to Spaces."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from appliance.backup.archive import (
    LATEST,
    BackupError,
    BackupManifest,
    apply_retention,
    file_sha256,
    model_id_of,
    to_json,
    write_private,
)
from appliance.backup.common import (
    ProgressFactory,
    applied_schema_version,
    default_progress,
    row_counts,
    server_major,
)
from appliance.backup.pgtools import PgTool, connection, find_tool, needs_tls, run_tool

if TYPE_CHECKING:
    from appliance.sync.spaces import SpacesClient

SPACES_PREFIX = "backups/"

_DUMP_TABLE = re.compile(r'dumping contents of table "(?:public\.)?([^"]+)"')


@dataclass(frozen=True)
class BackupResult:
    dump: Path
    manifest_path: Path
    manifest: BackupManifest
    removed: list[str] = field(default_factory=list)  # older backups deleted by retention


def _appliance_version() -> str:
    try:
        return metadata.version("raiox-appliance")
    except metadata.PackageNotFoundError:
        return "unknown"


async def create_backup(
    url: str,
    out_dir: Path,
    *,
    keep: int,
    model_dir: Path | None = None,
    now: datetime | None = None,
    progress: ProgressFactory = default_progress,
) -> BackupResult:
    """Dump the database into `out_dir`, write its manifest, then `latest.json`, then apply
    retention. Nothing of a failed backup stays behind, and `latest.json` is left alone."""
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    stem = f"raiox-{when:%Y%m%dT%H%M%SZ}"
    dump, manifest_path = out_dir / f"{stem}.dump", out_dir / f"{stem}.json"
    partial = out_dir / f".{stem}.dump.partial"
    await asyncio.to_thread(_claim, out_dir, partial, dump)
    created = [partial]  # removed again on failure: never another run's files
    try:
        manifest = await _dump(url, partial, stem, when, model_dir, progress)
        await asyncio.to_thread(_commit, partial, dump, manifest_path, manifest, created)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    removed = await asyncio.to_thread(apply_retention, out_dir, keep)
    return BackupResult(dump, manifest_path, manifest, removed)


def _claim(out_dir: Path, partial: Path, dump: Path) -> None:
    """Create the private folder and this run's partial file; a second run in the same
    second finds one of them and stops."""
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    try:
        if dump.exists():
            raise FileExistsError(dump)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise BackupError(f"a backup named {dump.stem} already exists in {out_dir}") from None


def _commit(
    partial: Path, dump: Path, manifest_path: Path, manifest: BackupManifest, created: list[Path]
) -> None:
    """The dump under its name (a link: never over another file), its manifest, and only
    then latest.json."""
    try:
        os.link(partial, dump)
    except FileExistsError:
        raise BackupError(f"a backup named {dump.stem} already exists") from None
    created.append(dump)
    partial.unlink()
    created.append(manifest_path)
    write_private(manifest_path, to_json(manifest.to_dict()))
    write_private(dump.parent / LATEST, to_json(manifest.to_dict()))


async def _dump(
    url: str,
    target: Path,
    stem: str,
    when: datetime,
    model_dir: Path | None,
    progress: ProgressFactory,
) -> BackupManifest:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        # The exported snapshot is what pg_dump reads: the counts describe exactly the dump.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            major, server_version = await server_major(conn)
            counts = await row_counts(conn)
            schema_version = await applied_schema_version(conn, counts)
            catalog_models: list[str] = []
            if "reference_images" in counts:
                rows = await conn.fetch(
                    "SELECT DISTINCT model_id FROM reference_images ORDER BY model_id"
                )
                catalog_models = [r["model_id"] for r in rows]
            tool = find_tool("pg_dump", major, tls=needs_tls(url))
            await _run_pg_dump(tool, url, snapshot, target, len(counts), progress)
    finally:
        await conn.close()
    sha256, size = await asyncio.to_thread(file_sha256, target)
    return BackupManifest(
        dump_file=f"{stem}.dump",
        created_at=when.isoformat().replace("+00:00", "Z"),
        appliance_version=_appliance_version(),
        model_id=model_id_of(model_dir),
        catalog_model_ids=catalog_models,
        schema_version=schema_version,
        tables=counts,
        dump_sha256=sha256,
        dump_size_bytes=size,
        server_version=server_version,
        pg_dump_version=tool.version,
    )


async def _run_pg_dump(
    tool: PgTool, url: str, snapshot: str, target: Path, tables: int, progress: ProgressFactory
) -> None:
    bar = progress(tables, "backup")

    def on_line(line: str) -> bool:
        found = _DUMP_TABLE.search(line)
        if found:
            bar.advance(note=found.group(1))
        return found is not None

    conn = connection(url)
    fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        args = ["--format=custom", "--verbose", f"--snapshot={snapshot}", f"--dbname={conn.dsn}"]
        try:
            await run_tool(tool, args, conn, stdout=f, on_progress=on_line)
        finally:
            bar.close()
        f.flush()
        os.fsync(f.fileno())


async def copy_to_spaces(spaces: SpacesClient, result: BackupResult) -> list[str]:
    """Upload the dump and its manifest under `backups/`, private, each checked afterwards
    the way replication checks an image (size, sha256 metadata and ETag of the bytes)."""
    from appliance.sync.outbox import OutboxItem
    from appliance.sync.spaces import VerificationError, digest_file, matches

    keys = []
    async with spaces.client() as s3:
        for path, content_type in (
            (result.dump, "application/octet-stream"),
            (result.manifest_path, "application/json"),
        ):
            digest = await asyncio.to_thread(digest_file, path)
            item = OutboxItem(
                0, SPACES_PREFIX + path.name, digest.sha256, digest.size, content_type, 0
            )
            await spaces.upload(s3, item, path)
            if not matches(await spaces.head(s3, item.storage_key), item, digest):
                raise VerificationError(f"{item.storage_key} in Spaces does not match the file")
            keys.append(item.storage_key)
    return keys
