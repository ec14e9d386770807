"""`raiox backup` and `raiox restore`.

Exit codes of `raiox backup`: 0 the backup is kept (and copied to Spaces when asked); 1 the
local backup is complete and recorded in latest.json, but the copy to Spaces failed; 2 no
backup was made. A failed offsite copy must be loud (cron, the compose job and Ansible see a
non-zero exit) without ever costing the local backup, which is finished before the copy starts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import asyncpg
import typer

from appliance.backup.archive import model_id_of, record_spaces_copy
from appliance.backup.create import BackupResult, copy_to_spaces, create_backup
from appliance.backup.restore import RestoreReport, restore_backup
from appliance.cli.common import fail, load_settings
from appliance.database import server_url
from appliance.errors import AppError
from appliance.settings import Settings

# Connection refused, wrong password, missing database: one line, not a traceback (asyncpg's
# messages never carry the password).
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def backup(
    out: Annotated[
        Path | None,
        typer.Option(help="Backup folder (default: RAIOX_BACKUP_DIR, the one /metrics watches)"),
    ] = None,
    spaces: Annotated[
        bool, typer.Option("--spaces", help="Also copy it, private, to Spaces under backups/")
    ] = False,
) -> None:
    """Dump the database (pg_dump custom format) with a manifest; keep the newest
    RAIOX_BACKUP_KEEP. Images are not in the dump: they stay on disk and in Spaces."""
    settings = load_settings()
    out_dir = out or settings.backups_dir

    async def job() -> BackupResult:
        async with server_url(settings) as url:
            return await create_backup(
                url, out_dir, keep=settings.backup.keep, model_dir=settings.model_dir
            )

    try:
        result = asyncio.run(job())
    except AppError as exc:
        fail(f"backup failed, nothing kept: {exc.detail}")
    except DATABASE_ERRORS as exc:
        fail(f"backup failed, nothing kept: {type(exc).__name__}: {exc}")
    m = result.manifest
    typer.echo(f"backup {result.dump} ({_size(m.dump_size_bytes)}, sha256 {m.dump_sha256})")
    typer.echo("rows: " + ", ".join(f"{t} {n}" for t, n in m.tables.items()))
    if result.removed:
        typer.echo(f"retention removed {len(result.removed) // 2} older backups")
    if spaces:
        _copy_to_spaces(settings, out_dir, result)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _copy_to_spaces(settings: Settings, out_dir: Path, result: BackupResult) -> None:
    error = None
    if not settings.spaces.enabled:
        error = "Spaces is not configured (RAIOX_SPACES_*)"
    else:
        from appliance.sync.spaces import SpacesClient

        client = SpacesClient(settings.spaces)
        try:
            keys = asyncio.run(copy_to_spaces(client, result))
        except Exception as exc:  # any failure of the copy: the local backup stands
            error = client.redact(f"{type(exc).__name__}: {exc}")
        else:
            typer.echo(f"copied to Spaces: {', '.join(keys)}")
    record_spaces_copy(out_dir, result.manifest, error)
    if error:
        typer.secho(
            f"the local backup is complete, but the copy to Spaces failed: {error}",
            fg="yellow",
            err=True,
        )
        raise typer.Exit(1)


def restore(
    file: Annotated[Path, typer.Argument(help="A backup's .dump or .json (or latest.json)")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace the contents of a database holding data")
    ] = False,
) -> None:
    """Restore a backup into the configured database, after checking its sha256; then apply
    migrations and compare row counts with the manifest. Stop the api and sync first."""
    settings = load_settings()

    async def job() -> RestoreReport:
        async with server_url(settings) as url:
            return await restore_backup(url, file, force=force, images_dir=settings.images_dir)

    try:
        report = asyncio.run(job())
    except AppError as exc:
        fail(exc.detail)
    except DATABASE_ERRORS as exc:
        fail(f"restore failed: {type(exc).__name__}: {exc}")
    _print_report(report, settings)


def _print_report(report: RestoreReport, settings: Settings) -> None:
    m = report.manifest
    typer.echo(f"restored {m.dump_file} (taken {m.created_at}, schema {m.schema_version})")
    if report.migrations_applied:
        typer.echo(f"migrations applied: {', '.join(report.migrations_applied)}")
    for c in report.counts:
        expected = "new table" if c.expected is None else str(c.expected)
        flag = "MISMATCH" if c in report.mismatches else "ok"
        typer.echo(f"  {c.table:<20} {c.restored:>8}  (backup {expected})  {flag}")
    if report.images_missing:
        typer.secho(
            f"{report.images_missing} images the database refers to are neither in "
            f"{settings.images_dir} nor replicated to Spaces: restore that folder too "
            "(the dump holds no image files)",
            fg="yellow",
        )
    current = model_id_of(settings.model_dir)
    if current and any(mid != current for mid in m.catalog_model_ids):
        typer.secho(
            "the catalog was embedded by another model than the current one: "
            "run `raiox catalog reembed`",
            fg="yellow",
        )
    if report.mismatches:
        typer.secho("row counts differ from the manifest", fg="red", err=True)
        raise typer.Exit(1)
