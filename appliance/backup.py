"""Backups of the appliance database and their restore.

A backup is a pg_dump custom-format archive `raiox-<UTC timestamp>.dump` with a manifest
`raiox-<UTC timestamp>.json` beside it (model id, schema version, row counts per table, sha256
and size of the dump). The row counts come from the very snapshot pg_dump reads (an exported
snapshot), so a restore can check that it got back exactly what was dumped. `latest.json` is
rewritten last, atomically, and only on success: monitoring reads the time of the last good
backup from it. The newest N backups are kept.

Image files are not in the dump: they live on disk (and in Spaces), addressed by their sha256.

A restore verifies the archive against its manifest before touching anything, refuses a target
that holds data unless forced, restores in one transaction (a failure leaves the target as it
was), applies this version's migrations and compares the row counts with the manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.database import apply_migrations, load_migrations
from appliance.errors import AppError
from appliance.pgtools import Connection, PgTool, connection, find_tool, list_archive, run_tool
from appliance.progress import Progress

if TYPE_CHECKING:
    from appliance.sync.spaces import SpacesClient

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST = "latest.json"
SPACES_PREFIX = "backups/"
_NAME = re.compile(r"^raiox-(\d{8}T\d{6}Z)\.(dump|json)$")
_DUMP_TABLE = re.compile(r'dumping contents of table "(?:public\.)?([^"]+)"')
_RESTORE_TABLE = re.compile(r'processing data for table "(?:public\.)?([^"]+)"')
# The extension is infrastructure, created by migration 001 with the privileges the appliance
# normally has; restoring it would need to own it (DROP/COMMENT ON EXTENSION).
_EXTENSION_ENTRY = re.compile(r"^\d+; \d+ \d+ (?:EXTENSION|COMMENT - EXTENSION) ")

ProgressFactory = Callable[[int, str], Progress]


class BackupError(AppError):
    status_code = 500
    code = "backup_failed"


class RestoreRefusedError(AppError):
    status_code = 409
    code = "restore_refused"


@dataclass(frozen=True)
class BackupManifest:
    dump_file: str
    created_at: str  # ISO 8601, UTC
    appliance_version: str
    model_id: str | None  # the model directory's, when the backup was taken
    catalog_model_ids: list[str]  # the models the stored embeddings were made with
    schema_version: int  # highest applied migration
    tables: dict[str, int]  # exact row counts, from the snapshot pg_dump read
    dump_sha256: str
    dump_size_bytes: int
    server_version: str
    pg_dump_version: str
    format_version: int = FORMAT_VERSION

    @property
    def created_at_unix(self) -> float:
        return datetime.fromisoformat(self.created_at).timestamp()

    @property
    def pg_dump_major(self) -> int:
        return int(self.pg_dump_version.split(".")[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown manifest format {data.get('format_version')!r}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def load(cls, path: Path) -> BackupManifest:
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RestoreRefusedError(
                f"no manifest {path.name} beside the dump: it cannot be verified"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RestoreRefusedError(f"unreadable manifest {path}: {exc}") from exc


@dataclass(frozen=True)
class BackupResult:
    dump: Path
    manifest_path: Path
    manifest: BackupManifest
    removed: list[str] = field(default_factory=list)  # older backups deleted by retention


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
        return [c for c in self.counts if not c.ok and not (migrated and c.table == _MIGRATIONS)]


_MIGRATIONS = "schema_migrations"


def default_progress(total: int, label: str) -> Progress:
    return Progress(total, label)


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file renamed over it), mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _appliance_version() -> str:
    try:
        return metadata.version("raiox-appliance")
    except metadata.PackageNotFoundError:
        return "unknown"


async def _tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    return [r["tablename"] for r in rows]


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Exact counts of every table of the appliance's schema."""
    counts = {}
    for table in await _tables(conn):
        counts[table] = int(await conn.fetchval(f'SELECT count(*) FROM public."{table}"'))
    return counts


async def _schema_version(conn: asyncpg.Connection, tables: Iterable[str]) -> int:
    if _MIGRATIONS not in tables:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def _server_major(conn: asyncpg.Connection) -> tuple[int, str]:
    version = str(await conn.fetchval("SHOW server_version"))
    return int(await conn.fetchval("SHOW server_version_num")) // 10000, version.split()[0]


def model_id_of(model_dir: Path | None) -> str | None:
    if model_dir is None or not (model_dir / "manifest.json").is_file():
        return None
    try:
        return str(json.loads((model_dir / "manifest.json").read_text())["model_id"])
    except (ValueError, KeyError):
        return None


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
    write_private(manifest_path, _json(manifest.to_dict()))
    write_private(dump.parent / LATEST, _json(manifest.to_dict()))


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
            major, server_version = await _server_major(conn)
            counts = await row_counts(conn)
            schema_version = await _schema_version(conn, counts)
            catalog_models: list[str] = []
            if "reference_images" in counts:
                rows = await conn.fetch(
                    "SELECT DISTINCT model_id FROM reference_images ORDER BY model_id"
                )
                catalog_models = [r["model_id"] for r in rows]
            tool = find_tool("pg_dump", major)
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


def _backups(out_dir: Path) -> dict[str, list[Path]]:
    """Files of each backup, by timestamp (which sorts as it reads)."""
    found: dict[str, list[Path]] = {}
    for path in out_dir.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.setdefault(match.group(1), []).append(path)
    return found


def apply_retention(out_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups (dump and manifest together)."""
    backups = _backups(out_dir)
    removed = []
    for stamp in sorted(backups)[: max(len(backups) - keep, 0)]:
        for path in backups[stamp]:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


async def copy_to_spaces(spaces: SpacesClient, result: BackupResult) -> list[str]:
    """Upload the dump and its manifest under `backups/`, private, each checked afterwards
    the way replication checks an image (size, sha256 metadata and ETag of the bytes)."""
    from appliance.sync.spaces import OutboxItem, VerificationError, digest_file, matches

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


def record_spaces_copy(out_dir: Path, manifest: BackupManifest, error: str | None) -> None:
    """Note in `latest.json` whether the newest backup also reached Spaces."""
    latest = manifest.to_dict() | {"spaces_copy": "failed" if error else "done"}
    if error:
        latest["spaces_error"] = error
    write_private(out_dir / LATEST, _json(latest))


def last_success_timestamp(out_dir: Path) -> float:
    """When the newest good backup was taken (Unix seconds); 0 when there is none."""
    try:
        data = json.loads((out_dir / LATEST).read_text(encoding="utf-8"))
        return datetime.fromisoformat(str(data["created_at"])).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


class BackupStatusCollector(Collector):
    """Reads `latest.json` at scrape time, so the api needs no state of its own about it."""

    def __init__(self, out_dir: Path) -> None:
        self._dir = out_dir

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "raiox_backup_last_success_timestamp_seconds",
            "When the newest successful `raiox backup` was taken (0: none yet).",
        )
        gauge.add_metric([], last_success_timestamp(self._dir))
        yield gauge


def backup_metrics(out_dir: Path) -> bytes:
    """The backup gauge in the text exposition format, read now (appended to /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackupStatusCollector(out_dir))
    return generate_latest(registry)


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
        tool = find_tool("pg_restore", manifest.pg_dump_major)
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
    tables = await _tables(conn)
    filled = [t for t in tables if t != _MIGRATIONS and await _has_rows(conn, t)]
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
