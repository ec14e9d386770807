"""The catalog's two search paths: past the threshold the HNSW index is built and used, and
its answer must be the exact scan's, on a catalog shaped like a real one (sizes of a line are
near each other, so the runners-up are close calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector

from appliance.catalog.repository import _ANN_SEARCH, HNSW_INDEX, Catalog, HnswParams
from appliance.database import apply_migrations
from tests.fixtures.synthetic_catalog import exact_top, load, make_queries, synthetic_catalog

MODEL = "m"
REFERENCES = 1500
THRESHOLD = 500  # small, so the test builds an index in about a second


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    await apply_migrations(conn)
    await conn.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, init=register_vector)
    yield pool
    await pool.close()


async def test_hnsw_path_returns_the_exact_top3(pool: asyncpg.Pool, database_url: str) -> None:
    synthetic = synthetic_catalog(REFERENCES, seed=1)
    async with pool.acquire() as conn:
        await load(conn, synthetic, MODEL)
    exact = Catalog(pool, hnsw_threshold=REFERENCES)
    assert not await exact.ensure_index()
    # A table of 300 implants is cheaper to scan than to search by index, and the planner
    # knows it; here the index must be what answers, as it is for a large catalog.
    index_pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=1,
        init=register_vector,
        server_settings={"enable_seqscan": "off"},
    )
    try:
        indexed = Catalog(index_pool, hnsw_threshold=THRESHOLD)
        assert await indexed.ensure_index()
        queries = make_queries(synthetic, 40, seed=2)
        plan = await index_pool.fetch(f"EXPLAIN {_ANN_SEARCH}", queries[0], MODEL, 3, 30)
        assert f"Index Scan using {HNSW_INDEX}" in "\n".join(r[0] for r in plan)
        for query, expected in zip(queries, exact_top(synthetic, queries, 3), strict=True):
            by_scan = [m.implant.id - 1 for m in await exact.search(query, MODEL, 3)]
            by_index = await indexed.search(query, MODEL, 3)
            assert by_scan == expected
            assert [m.implant.id - 1 for m in by_index] == expected
            assert [m.rank for m in by_index] == [1, 2, 3]
    finally:
        await index_pool.close()


async def test_index_is_built_with_the_chosen_parameters(pool: asyncpg.Pool) -> None:
    synthetic = synthetic_catalog(THRESHOLD + 50, seed=3)
    async with pool.acquire() as conn:
        await load(conn, synthetic, MODEL)
    catalog = Catalog(pool, hnsw_threshold=THRESHOLD, hnsw=HnswParams(m=8, ef_construction=32))
    assert await catalog.ensure_index()
    definition = await pool.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = $1", HNSW_INDEX
    )
    assert "m='8'" in definition and "ef_construction='32'" in definition


async def test_embeddings_are_stored_inline(pool: asyncpg.Pool) -> None:
    """Migration 006: a toasted vector costs a TOAST lookup on every read of a scan."""
    synthetic = synthetic_catalog(200, seed=4)
    async with pool.acquire() as conn:
        await load(conn, synthetic, MODEL)
        await conn.execute("VACUUM reference_images")
        toast_pages = await conn.fetchval(
            "SELECT coalesce(pg_relation_size(reltoastrelid), 0) FROM pg_class "
            "WHERE relname = 'reference_images'"
        )
        storage = await conn.fetchval(
            "SELECT attstorage::text FROM pg_attribute "
            "WHERE attrelid = 'reference_images'::regclass AND attname = 'embedding'"
        )
    assert storage == "p"
    assert toast_pages == 0
    stored = await pool.fetchval("SELECT embedding FROM reference_images ORDER BY id LIMIT 1")
    assert np.array_equal(stored.to_numpy(), synthetic.vectors[0])


async def test_centroids_follow_the_references(pool: asyncpg.Pool) -> None:
    """Whatever writes the references (import, re-embed, admin), triggers keep the centroid
    that the index is built on."""
    synthetic = synthetic_catalog(20, seed=5)
    async with pool.acquire() as conn:
        await load(conn, synthetic, MODEL)

    async def centroid(implant_id: int) -> np.ndarray:
        value = await pool.fetchval("SELECT centroid FROM implants WHERE id = $1", implant_id)
        return np.asarray(value.to_numpy())

    views = synthetic.vectors[synthetic.implant_of == 0]
    assert np.allclose(await centroid(1), views.mean(axis=0), atol=1e-6)
    first = await pool.fetchval("SELECT min(id) FROM reference_images WHERE implant_id = 1")
    await pool.execute("DELETE FROM reference_images WHERE id = $1", first)
    assert np.allclose(await centroid(1), views[1:].mean(axis=0), atol=1e-6)
    await pool.execute(
        "UPDATE reference_images SET embedding = $1 WHERE implant_id = 1", synthetic.vectors[-1]
    )
    assert np.allclose(await centroid(1), synthetic.vectors[-1], atol=1e-6)
    await pool.execute("DELETE FROM reference_images WHERE implant_id = 1")
    assert await pool.fetchval("SELECT centroid FROM implants WHERE id = 1") is None
