"""Migrations, catalog import/re-embed, model-id safety and faults, against real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_reference
from appliance.catalog.importer import read_manifest, reembed_catalog
from appliance.catalog.repository import CatalogEmptyError
from appliance.components import UntrainedModelError, build_components, load_encoder
from appliance.database import apply_migrations
from tests.fixtures.appliance import appliance_settings, asgi_client, load_catalog, quiet_progress


async def test_migrations_apply_twice(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = await apply_migrations(conn)
        second = await apply_migrations(conn)
        assert first and second == []
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        assert {"implants", "reference_images", "submissions", "matches", "outbox"} <= tables
    finally:
        await conn.close()


def write_manifest(folder: Path) -> Path:
    rows = []
    for implant in DEMO_IMPLANTS[:4]:
        paths = []
        for view in range(2):
            path = folder / f"{implant.key}-{view}.png"
            path.write_bytes(png_bytes(render_reference(implant, view)))
            paths.append(path.name)
        rows.append(
            {
                "name": implant.name,
                "manufacturer": implant.manufacturer,
                "type": implant.type,
                "diameter_mm": implant.diameter_mm,
                "images": paths,
            }
        )
    manifest = folder / "catalog.json"
    manifest.write_text(json.dumps(rows))
    return manifest


async def test_import_is_idempotent_and_reembed_fixes_model_ids(
    database_url: str, model_dir: Path, tmp_path: Path
) -> None:
    settings = appliance_settings(database_url, model_dir)
    comps = await build_components(settings)
    try:
        specs = read_manifest(write_manifest(tmp_path))
        first = await load_catalog(comps, specs)
        assert (first.implants, first.embedded, first.skipped) == (4, 8, 0)
        second = await load_catalog(comps, specs)
        assert (second.embedded, second.skipped) == (0, 8)
        pool = comps.database.pool
        assert await pool.fetchval("SELECT count(*) FROM implants") == 4
        assert await pool.fetchval("SELECT count(*) FROM reference_images") == 8
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 8

        # one vector made by another model: search refuses, loudly, to mix them
        await pool.execute(
            "UPDATE reference_images SET model_id = 'other-model' WHERE id = "
            "(SELECT min(id) FROM reference_images)"
        )
        await comps.catalog.stats(fresh=True)
        async with asgi_client(comps) as client:
            data = png_bytes(render_reference(DEMO_IMPLANTS[0], 0))
            response = await client.post("/upload", files={"file": ("a.png", data)})
            assert response.status_code == 409
            assert response.json()["error"] == "catalog_model_mismatch"
            assert "raiox catalog reembed" in response.json()["detail"]

            count = await reembed_catalog(
                catalog=comps.catalog,
                embedder=comps.embedder,
                store=comps.store,
                progress=quiet_progress,
            )
            assert count == 1
            models = await pool.fetch("SELECT DISTINCT model_id FROM reference_images")
            assert [r["model_id"] for r in models] == [comps.encoder.model_id]
            response = await client.post("/upload", files={"file": ("a.png", data)})
            assert response.status_code == 200
            assert response.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[0].name
    finally:
        await comps.close()


async def test_empty_catalog_is_a_409_with_a_hint_and_stores_nothing(
    database_url: str, model_dir: Path
) -> None:
    settings = appliance_settings(database_url, model_dir)
    app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        data = png_bytes(render_reference(DEMO_IMPLANTS[0], 0))
        response = await client.post("/upload", files={"file": ("a.png", data)})
        assert response.status_code == 409
        assert response.json()["error"] == "catalog_empty"
        assert "raiox catalog" in response.json()["detail"]
        health = await client.get("/healthcheck")
        assert health.json()["components"]["database"]["status"] == "degraded"
    assert not any(p.is_file() for p in settings.images_dir.rglob("*"))


async def test_a_catalog_loaded_by_another_process_is_seen_at_once(
    database_url: str, model_dir: Path, tmp_path: Path
) -> None:
    """The deploy starts the api, then loads the catalog from another process: the api must
    not keep answering `catalog_empty` from a cached count."""
    settings = appliance_settings(database_url, model_dir)
    serving = await build_components(settings)
    loading = await build_components(settings)
    try:
        with pytest.raises(CatalogEmptyError):
            await serving.catalog.check_model(serving.encoder.model_id)
        await load_catalog(loading, read_manifest(write_manifest(tmp_path)))
        stats = await serving.catalog.check_model(serving.encoder.model_id)
        assert stats.references == 8
    finally:
        await loading.close()
        await serving.close()


async def test_database_down_is_a_503_and_leaves_no_untracked_image(
    pg_server: Any, model_dir: Path
) -> None:
    """A second, private Postgres that the test can stop."""
    import shutil
    import tempfile

    import pgserver

    root = Path(tempfile.mkdtemp(prefix="raiox-test-pgdown-", dir="/tmp"))
    server = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE raiox;")
        settings = appliance_settings(str(server.get_uri(database="raiox")), model_dir)
        comps = await build_components(settings)
        try:
            from appliance.catalog.importer import demo_specs

            await load_catalog(comps, demo_specs(1)[:3])
            async with asgi_client(comps) as client:
                server.cleanup()  # stop Postgres under the running app
                await asyncio.sleep(0.5)
                data = png_bytes(render_reference(DEMO_IMPLANTS[1], 2))
                response = await client.post("/upload", files={"file": ("a.png", data)})
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "database_unavailable"
                assert response.headers["retry-after"]
                health = await client.get("/healthcheck")
                assert health.status_code == 503
                assert health.json()["components"]["database"]["status"] == "down"
            # The client was told to retry; a patient image no row points to would never be
            # replicated nor removed.
            kept = [p for p in (settings.images_dir / "uploads").rglob("*") if p.is_file()]
            assert kept == []
        finally:
            await comps.database.pool.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_untrained_model_refused_unless_allowed(model_dir: Path, tmp_path: Path) -> None:
    settings = appliance_settings("postgresql://unused", model_dir, allow_untrained_model=False)
    with pytest.raises(UntrainedModelError, match="RAIOX_ALLOW_UNTRAINED_MODEL"):
        load_encoder(settings)
    assert (
        load_encoder(dataclasses.replace(settings, allow_untrained_model=True)).pretrained is False
    )
