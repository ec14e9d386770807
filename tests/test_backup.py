"""Backups and restores against real PostgreSQL + pgvector (pgserver) and a real S3 endpoint
(moto server): what is dumped comes back row for row, a damaged dump or a database holding
data is refused, retention keeps N, and a Spaces outage never costs the local backup."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pgvector.asyncpg import register_vector
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from appliance.backup.archive import (
    LATEST,
    BackupError,
    BackupManifest,
    RestoreRefusedError,
    last_success_timestamp,
)
from appliance.backup.create import create_backup
from appliance.backup.pgtools import connection, find_tool
from appliance.backup.restore import restore_backup
from appliance.backup.status import backup_metrics
from appliance.cli.main import app
from appliance.components import Components
from appliance.database import apply_migrations, load_migrations, server_url
from appliance.settings import Settings
from tests.fixtures.appliance import quiet_progress
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY, S3Server

TABLES = ("implants", "reference_images", "submissions", "submission_images", "matches", "outbox")
GAUGE = "raiox_backup_last_success_timestamp_seconds"


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="raiox-test-backup-", dir="/tmp"))
    yield root / "backups"
    shutil.rmtree(root, ignore_errors=True)


async def populate(url: str) -> None:
    """A small appliance's worth of state: catalog, a submission with its matches, outbox."""
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        await register_vector(conn)
        for i in range(3):
            implant = await conn.fetchval(
                "INSERT INTO implants (name, manufacturer, type, diameter_mm) "
                "VALUES ($1, 'Acme', 'cone', 4.1) RETURNING id",
                f"Implant {i}",
            )
            for view in range(2):
                vector = [float((i + 1) * (view + 1) % 7) / 7 + 0.01] * 512
                await conn.execute(
                    "INSERT INTO reference_images (implant_id, storage_key, sha256, model_id, "
                    "embedding) VALUES ($1, $2, $3, 'model-a', $4)",
                    implant,
                    f"referencia/{i}-{view}.png",
                    f"{i}{view}" * 32,
                    vector,
                )
        submission = await conn.fetchval(
            "INSERT INTO submissions (source, external_id, result_token, dentist_name, status, "
            "payload) VALUES ('jotform', '5912', 'tok-1', 'Dra. Ana', 'done', "
            '\'{"q": "36"}\') RETURNING id'
        )
        image = await conn.fetchval(
            "INSERT INTO submission_images (submission_id, position, sha256, storage_key, "
            "status) VALUES ($1, 0, 'ab', 'uploads/ab.png', 'done') RETURNING id",
            submission,
        )
        for rank, (implant, ref) in enumerate(
            await conn.fetch(
                "SELECT implant_id, min(id) FROM reference_images GROUP BY 1 ORDER BY 1"
            ),
            start=1,
        ):
            await conn.execute(
                "INSERT INTO matches VALUES ($1, $2, $3, $4, $5)", image, rank, implant, ref, 0.9
            )
        await conn.execute(
            "INSERT INTO outbox (storage_key, sha256, size_bytes, content_type, state) VALUES "
            "('uploads/ab.png', 'ab', 10, 'image/png', 'pending'), "
            "('referencia/0-0.png', '00', 10, 'image/png', 'done')"
        )
    finally:
        await conn.close()


async def snapshot(url: str) -> dict[str, list[str]]:
    """Every row of every appliance table, as text, in a stable order."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {
            r["tablename"]: await conn.fetch(
                f'SELECT t::text FROM public."{r["tablename"]}" t ORDER BY 1'
            )
            for r in tables
        }
    finally:
        await conn.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_backup_restores_into_an_empty_database_row_for_row(
    pg_server: Any, backup_dir: Path
) -> None:
    source = str(pg_server.get_uri(database=_new_db(pg_server)))
    await populate(source)
    result = await create_backup(source, backup_dir, keep=5, progress=quiet_progress)

    m = result.manifest
    assert result.dump.name == m.dump_file and result.dump.name.startswith("raiox-")
    assert {t: m.tables[t] for t in TABLES} == {
        "implants": 3, "reference_images": 6, "submissions": 1,
        "submission_images": 1, "matches": 3, "outbox": 2,
    }  # fmt: skip
    latest = max(migration.version for migration in load_migrations())
    assert m.schema_version == latest and m.catalog_model_ids == ["model-a"]
    assert json.loads((backup_dir / LATEST).read_text())["dump_file"] == m.dump_file
    assert mode(backup_dir) == 0o700
    assert {mode(backup_dir / n) for n in names(backup_dir)} == {0o600}

    target = str(pg_server.get_uri(database=_new_db(pg_server)))
    report = await restore_backup(target, result.dump, progress=quiet_progress)

    assert report.mismatches == [] and report.migrations_applied == []
    assert await snapshot(target) == await snapshot(source)
    conn = await asyncpg.connect(target)
    try:  # the sequences came back too: new rows do not collide with restored ones
        await conn.execute("INSERT INTO implants (name, manufacturer) VALUES ('New', 'Acme')")
    finally:
        await conn.close()


async def test_restore_accepts_a_migrated_but_empty_database(
    pg_server: Any, backup_dir: Path
) -> None:
    """What an appliance that started once (and migrated) against a new database looks like."""
    source = str(pg_server.get_uri(database=_new_db(pg_server)))
    await populate(source)
    await create_backup(source, backup_dir, keep=5, progress=quiet_progress)
    target = str(pg_server.get_uri(database=_new_db(pg_server)))
    conn = await asyncpg.connect(target)
    await apply_migrations(conn)
    await conn.close()

    report = await restore_backup(target, backup_dir / LATEST, progress=quiet_progress)

    assert report.mismatches == []
    assert await snapshot(target) == await snapshot(source)


async def test_a_tampered_dump_is_refused_before_anything_is_touched(
    pg_server: Any, backup_dir: Path
) -> None:
    source = str(pg_server.get_uri(database=_new_db(pg_server)))
    await populate(source)
    result = await create_backup(source, backup_dir, keep=5, progress=quiet_progress)
    data = bytearray(result.dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    result.dump.write_bytes(bytes(data))
    target = str(pg_server.get_uri(database=_new_db(pg_server)))

    with pytest.raises(RestoreRefusedError, match="does not match its manifest"):
        await restore_backup(target, result.dump, progress=quiet_progress)
    assert await snapshot(target) == {}


async def test_a_database_holding_data_is_refused_unless_forced(
    pg_server: Any, backup_dir: Path
) -> None:
    url = str(pg_server.get_uri(database=_new_db(pg_server)))
    await populate(url)
    result = await create_backup(url, backup_dir, keep=5, progress=quiet_progress)
    before = await snapshot(url)
    conn = await asyncpg.connect(url)
    await conn.execute("DELETE FROM outbox WHERE state = 'done'")
    await conn.execute("INSERT INTO implants (name, manufacturer) VALUES ('Later', 'Acme')")
    await conn.close()

    with pytest.raises(RestoreRefusedError, match="holds data"):
        await restore_backup(url, result.dump, progress=quiet_progress)
    assert (await snapshot(url))["implants"] != before["implants"]  # untouched

    report = await restore_backup(url, result.dump, force=True, progress=quiet_progress)
    assert report.mismatches == []
    assert await snapshot(url) == before


async def test_retention_keeps_the_newest_n(pg_server: Any, backup_dir: Path) -> None:
    url = str(pg_server.get_uri(database=_new_db(pg_server)))
    await populate(url)
    start = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    for day in range(4):
        await create_backup(
            url, backup_dir, keep=2, now=start + timedelta(days=day), progress=quiet_progress
        )

    assert names(backup_dir) == [
        "latest.json",
        "raiox-20261122T030000Z.dump",
        "raiox-20261122T030000Z.json",
        "raiox-20261123T030000Z.dump",
        "raiox-20261123T030000Z.json",
    ]
    latest = BackupManifest.load(backup_dir / LATEST)
    assert latest.dump_file == "raiox-20261123T030000Z.dump"
    assert last_success_timestamp(backup_dir) == (start + timedelta(days=3)).timestamp()


async def test_a_failed_backup_leaves_nothing_and_keeps_latest(
    pg_server: Any, backup_dir: Path
) -> None:
    name = _new_db(pg_server)
    url = str(pg_server.get_uri(database=name))
    await populate(url)
    first = await create_backup(url, backup_dir, keep=5, progress=quiet_progress)
    latest = (backup_dir / LATEST).read_bytes()
    broken = url.replace(f"/{name}?", f"/{name}_missing?")
    same_second = datetime.fromisoformat(first.manifest.created_at)
    later = same_second + timedelta(hours=1)  # its own name: it fails on the database

    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await create_backup(broken, backup_dir, keep=5, now=later, progress=quiet_progress)
    with pytest.raises(BackupError, match="already exists"):
        await create_backup(url, backup_dir, keep=5, now=same_second, progress=quiet_progress)

    assert names(backup_dir) == sorted([first.dump.name, first.manifest_path.name, LATEST])
    assert BackupManifest.load(first.manifest_path) == first.manifest
    assert (backup_dir / LATEST).read_bytes() == latest


def test_the_gauge_reads_latest_json(backup_dir: Path) -> None:
    def gauge() -> float:
        text = backup_metrics(backup_dir).decode()
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == GAUGE]
        return float(family.samples[0].value)

    assert gauge() == 0.0  # no backup yet
    backup_dir.mkdir(parents=True)
    (backup_dir / LATEST).write_text(json.dumps({"created_at": "2026-11-25T03:00:00Z"}))
    assert gauge() == datetime(2026, 11, 25, 3, tzinfo=UTC).timestamp()


async def test_metrics_endpoint_exposes_the_backup_gauge(
    client: httpx.AsyncClient, demo_components: Components
) -> None:
    async def gauge() -> float:
        response = await client.get("/metrics")
        assert response.status_code == 200
        families = text_string_to_metric_families(response.text)
        (family,) = [f for f in families if f.name == GAUGE]
        return float(family.samples[0].value)

    folder = demo_components.settings.backups_dir
    assert await gauge() == 0.0
    folder.mkdir(parents=True)
    try:
        (folder / LATEST).write_text(json.dumps({"created_at": "2026-11-25T03:00:00Z"}))
        assert await gauge() == datetime(2026, 11, 25, 3, tzinfo=UTC).timestamp()
    finally:
        shutil.rmtree(folder)


def test_password_travels_in_the_environment_not_the_command_line() -> None:
    conn = connection("postgresql://raiox:s3cret@db:5432/raiox?sslmode=disable")
    assert conn.dsn == "postgresql://raiox@db:5432/raiox?sslmode=disable"
    assert conn.env["PGPASSWORD"] == "s3cret"
    encoded = connection("postgresql://raiox:p%40ss%2Fw@db/raiox")
    assert encoded.dsn == "postgresql://raiox@db/raiox" and encoded.env["PGPASSWORD"] == "p@ss/w"


def test_pg_dump_is_new_enough_for_the_server(pg_server: Any) -> None:
    tool = find_tool("pg_dump", 16)
    assert tool.major >= 16


class TestCommandLine:
    """`raiox backup --spaces` and `raiox restore` as an operator (or the nightly job) runs
    them, against the real S3 endpoint, then with it down."""

    def env(self, backup_dir: Path, **extra: str) -> dict[str, str]:
        return {
            "RAIOX_DATA_DIR": str(backup_dir.parent / "data"),
            "RAIOX_BACKUP_DIR": str(backup_dir),
            "RAIOX_BACKUP_KEEP": "5",
            **extra,
        }

    def test_spaces_copy_is_private_and_an_outage_keeps_the_local_backup(
        self, pg_server: Any, s3_server: S3Server, backup_dir: Path
    ) -> None:
        url = str(pg_server.get_uri(database=_new_db(pg_server)))
        asyncio.run(populate(url))
        bucket = s3_server.new_bucket()
        env = self.env(
            backup_dir,
            RAIOX_DATABASE_URL=url,
            RAIOX_SPACES_ENDPOINT=s3_server.endpoint,
            RAIOX_SPACES_BUCKET=bucket,
            RAIOX_SPACES_ACCESS_KEY=ACCESS_KEY,
            RAIOX_SPACES_SECRET_KEY=SECRET_KEY,
        )
        runner = CliRunner()

        done = runner.invoke(app, ["backup", "--spaces"], env=env)

        assert done.exit_code == 0, done.output
        s3 = s3_server.client()
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        (dump,) = backup_dir.glob("raiox-*.dump")
        assert keys == {f"backups/{dump.name}", f"backups/{dump.stem}.json"}
        for key in keys:
            grants = s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
            assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]  # owner only
            assert "URI" not in grants[0]["Grantee"]  # no AllUsers/AuthenticatedUsers group
        remote = s3.get_object(Bucket=bucket, Key=f"backups/{dump.name}")["Body"].read()
        assert remote == dump.read_bytes()
        assert json.loads((backup_dir / LATEST).read_text())["spaces_copy"] == "done"

        time.sleep(1.1)  # backups are named by the second
        s3_server.stop()
        try:
            outage = runner.invoke(app, ["backup", "--spaces"], env=env)
        finally:
            s3_server.start()

        assert outage.exit_code == 1, outage.output
        assert "the local backup is complete" in outage.output
        assert SECRET_KEY not in outage.output
        latest = json.loads((backup_dir / LATEST).read_text())
        assert latest["spaces_copy"] == "failed" and latest["dump_file"] != dump.name
        target = str(pg_server.get_uri(database=_new_db(pg_server)))
        restored = runner.invoke(
            app, ["restore", str(backup_dir / latest["dump_file"])],
            env=self.env(backup_dir, RAIOX_DATABASE_URL=target),
        )  # fmt: skip
        assert restored.exit_code == 0, restored.output
        assert asyncio.run(snapshot(target)) == asyncio.run(snapshot(url))
        # 6 references + 1 upload on no disk here, 1 of them replicated: 6 to bring back
        assert "6 images the database refers to are neither in" in restored.output

    def test_embedded_default_backs_up_and_restores(self, backup_dir: Path) -> None:
        """No RAIOX_DATABASE_URL: the appliance's own pgserver Postgres, both ways."""
        source_dir, target_dir = backup_dir.parent / "a", backup_dir.parent / "b"

        async def fill() -> dict[str, list[str]]:
            async with server_url(Settings(data_dir=source_dir)) as url:
                await populate(url)
                return await snapshot(url)

        async def restored_rows() -> dict[str, list[str]]:
            async with server_url(Settings(data_dir=target_dir)) as url:
                return await snapshot(url)

        expected = asyncio.run(fill())
        runner = CliRunner()

        made = runner.invoke(
            app, ["backup"], env=self.env(backup_dir, RAIOX_DATA_DIR=str(source_dir))
        )
        assert made.exit_code == 0, made.output
        restored = runner.invoke(
            app, ["restore", str(backup_dir / LATEST)],
            env=self.env(backup_dir, RAIOX_DATA_DIR=str(target_dir)),
        )  # fmt: skip

        assert restored.exit_code == 0, restored.output
        assert "MISMATCH" not in restored.output
        assert asyncio.run(restored_rows()) == expected


_names = iter(range(10**6))


def _new_db(pg_server: Any) -> str:
    name = f"raiox_backup_{os.getpid()}_{next(_names)}"
    pg_server.psql(f"CREATE DATABASE {name};")
    return name
