"""The reference implant catalog in Postgres + pgvector and its top-k search.

Search returns distinct implants (the best reference of each), so three views of one implant
never crowd out the runners-up. Small catalogs are scanned exactly; past a threshold an HNSW
index over the implants' centroids proposes candidate implants, and every reference of those
is then ranked exactly (see HnswParams).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

from appliance.errors import AppError

HNSW_INDEX = "implants_centroid_hnsw"
STATS_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class HnswParams:
    """The HNSW index and how its answer becomes k distinct implants (tests/bench/catalog.py).

    The index holds one point per implant, the centroid of its references (kept by triggers,
    migration 006), not the references themselves: an implant's views are near each other and
    the sizes of one line near those, which a graph over the references navigates poorly (the
    best per implant among its nearest references found the exact top 3 82-98% of the time at
    100k). The index proposes `candidates` implants; all their references are then compared
    exactly, so the order among the runners-up is the exact scan's.
    """

    m: int = 16
    ef_construction: int = 64
    ef_search: int = 80
    candidates: int = 30
    # The graph must fit in memory while it is built, or the build slows down many times over.
    build_memory: str = "1GB"


class CatalogEmptyError(AppError):
    status_code = 409
    code = "catalog_empty"


class CatalogModelMismatchError(AppError):
    status_code = 409
    code = "catalog_model_mismatch"


class ImplantNotFoundError(AppError):
    status_code = 404
    code = "implant_not_found"


@dataclass(frozen=True)
class NewImplant:
    name: str
    manufacturer: str
    type: str
    platform: str | None = None
    diameter_mm: float | None = None
    length_mm: float | None = None
    notes: str | None = None
    synthetic: bool = False


@dataclass(frozen=True, kw_only=True)
class Implant(NewImplant):
    """A catalog implant: what was imported, plus the id the database gave it."""

    id: int


@dataclass(frozen=True)
class Match:
    rank: int
    implant: Implant
    reference_image_id: int
    similarity: float


@dataclass(frozen=True)
class Reference:
    id: int
    implant_id: int
    storage_key: str
    sha256: str
    model_id: str


@dataclass(frozen=True)
class CatalogStats:
    implants: int
    references_by_model: dict[str, int]

    @property
    def references(self) -> int:
        return sum(self.references_by_model.values())


_IMPLANT_COLUMNS = "i.id, i.name, i.manufacturer, i.type, i.platform, i.diameter_mm, i.length_mm, "
_IMPLANT_COLUMNS += "i.notes, i.synthetic"


def implant_from_row(row: asyncpg.Record) -> Implant:
    return Implant(
        id=row["id"],
        name=row["name"],
        manufacturer=row["manufacturer"],
        type=row["type"],
        platform=row["platform"],
        diameter_mm=row["diameter_mm"],
        length_mm=row["length_mm"],
        notes=row["notes"],
        synthetic=row["synthetic"],
    )


class Catalog:
    def __init__(
        self, pool: asyncpg.Pool, *, hnsw_threshold: int = 2000, hnsw: HnswParams | None = None
    ) -> None:
        self._pool = pool
        self._hnsw_threshold = hnsw_threshold
        self._hnsw = hnsw or HnswParams()
        self._stats: CatalogStats | None = None
        self._stats_at = 0.0

    async def stats(self, *, fresh: bool = False) -> CatalogStats:
        """Counts, cached briefly: search checks them on every request. An empty catalog is
        never cached: it is the state right before an import (or another process's import),
        and answering "empty" for 30 s after the catalog arrived would refuse good requests."""
        stale = time.monotonic() - self._stats_at > STATS_TTL_SECONDS
        if fresh or self._stats is None or not self._stats.references_by_model or stale:
            async with self._pool.acquire() as conn:
                implants = await conn.fetchval("SELECT count(*) FROM implants")
                rows = await conn.fetch(
                    "SELECT model_id, count(*) AS n FROM reference_images GROUP BY model_id"
                )
            self._stats = CatalogStats(implants, {r["model_id"]: r["n"] for r in rows})
            self._stats_at = time.monotonic()
        return self._stats

    async def check_model(self, model_id: str) -> CatalogStats:
        """Refuse, loudly, to compare vectors of different models."""
        stats = await self.stats()
        if not stats.references_by_model:
            raise CatalogEmptyError(
                "The reference catalog is empty: load it with `raiox catalog import MANIFEST` "
                "(or `raiox catalog demo` for the synthetic demo catalog)."
            )
        others = sorted(m for m in stats.references_by_model if m != model_id)
        if others:
            raise CatalogModelMismatchError(
                f"The catalog holds embeddings of model(s) {', '.join(o[:12] for o in others)} "
                f"but the running model is {model_id[:12]}: run `raiox catalog reembed`."
            )
        return stats

    async def search(self, vector: np.ndarray, model_id: str, k: int) -> list[Match]:
        stats = await self.check_model(model_id)
        use_index = stats.references > self._hnsw_threshold
        if use_index:
            candidates = max(self._hnsw.candidates, k)
            ef_search = max(self._hnsw.ef_search, candidates)
            # A session setting costs no transaction; the pool resets it when the connection
            # goes back.
            async with self._pool.acquire() as conn:
                await conn.execute(f"SET hnsw.ef_search = {ef_search:d}")
                rows = await conn.fetch(_ANN_SEARCH, vector, model_id, k, candidates)
        else:  # one round trip: no transaction to open and commit around a single query
            rows = await self._pool.fetch(_EXACT_SEARCH, vector, model_id, k)
        return [
            Match(
                rank=n,
                implant=implant_from_row(row),
                reference_image_id=row["reference_id"],
                similarity=float(1.0 - row["distance"]),
            )
            for n, row in enumerate(rows, start=1)
        ]

    async def list_implants(
        self, *, manufacturer: str | None, limit: int, offset: int
    ) -> tuple[list[Implant], int]:
        where = (
            "WHERE lower(i.manufacturer) = lower($1)" if manufacturer else "WHERE $1::text IS NULL"
        )
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(f"SELECT count(*) FROM implants i {where}", manufacturer)
            rows = await conn.fetch(
                f"SELECT {_IMPLANT_COLUMNS} FROM implants i {where} "
                "ORDER BY i.manufacturer, i.name LIMIT $2 OFFSET $3",
                manufacturer,
                limit,
                offset,
            )
        return [implant_from_row(r) for r in rows], total

    async def get_implant(self, implant_id: int) -> tuple[Implant, list[int]]:
        """The implant and the ids of its reference images."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_IMPLANT_COLUMNS} FROM implants i WHERE i.id = $1", implant_id
            )
            if row is None:
                raise ImplantNotFoundError(f"No implant with id {implant_id}.")
            refs = await conn.fetch(
                "SELECT id FROM reference_images WHERE implant_id = $1 ORDER BY id", implant_id
            )
        return implant_from_row(row), [r["id"] for r in refs]

    async def get_reference(self, reference_id: int) -> Reference | None:
        row = await self._pool.fetchrow(
            "SELECT id, implant_id, storage_key, sha256, model_id FROM reference_images "
            "WHERE id = $1",
            reference_id,
        )
        return None if row is None else Reference(**dict(row))

    async def upsert_implant(self, conn: asyncpg.Connection, implant: NewImplant) -> int:
        """Insert or update by (manufacturer, name): re-importing a manifest changes nothing."""
        implant_id: int = await conn.fetchval(
            "INSERT INTO implants (name, manufacturer, type, platform, diameter_mm, length_mm, "
            "notes, synthetic) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (manufacturer, name) DO UPDATE SET type = EXCLUDED.type, "
            "platform = EXCLUDED.platform, diameter_mm = EXCLUDED.diameter_mm, "
            "length_mm = EXCLUDED.length_mm, notes = EXCLUDED.notes, "
            "synthetic = EXCLUDED.synthetic RETURNING id",
            implant.name,
            implant.manufacturer,
            implant.type,
            implant.platform,
            implant.diameter_mm,
            implant.length_mm,
            implant.notes,
            implant.synthetic,
        )
        return implant_id

    async def reference_model(self, implant_id: int, sha256: str) -> str | None:
        """The model that embedded this implant's image with these bytes, if it is known."""
        model_id: str | None = await self._pool.fetchval(
            "SELECT model_id FROM reference_images WHERE implant_id = $1 AND sha256 = $2",
            implant_id,
            sha256,
        )
        return model_id

    async def add_reference(
        self,
        conn: asyncpg.Connection,
        *,
        implant_id: int,
        storage_key: str,
        sha256: str,
        model_id: str,
        embedding: np.ndarray,
    ) -> int:
        ref_id: int = await conn.fetchval(
            "INSERT INTO reference_images (implant_id, storage_key, sha256, model_id, embedding) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (implant_id, sha256) DO UPDATE SET "
            "storage_key = EXCLUDED.storage_key, model_id = EXCLUDED.model_id, "
            "embedding = EXCLUDED.embedding RETURNING id",
            implant_id,
            storage_key,
            sha256,
            model_id,
            embedding,
        )
        return ref_id

    async def references(self, *, not_model: str | None = None) -> list[Reference]:
        rows = await self._pool.fetch(
            "SELECT id, implant_id, storage_key, sha256, model_id FROM reference_images "
            "WHERE $1::text IS NULL OR model_id <> $1 ORDER BY id",
            not_model,
        )
        return [Reference(**dict(r)) for r in rows]

    async def update_embeddings(
        self, updates: Sequence[tuple[int, np.ndarray]], model_id: str
    ) -> None:
        async with self._pool.acquire() as conn:
            await conn.executemany(
                "UPDATE reference_images SET embedding = $2, model_id = $3 WHERE id = $1",
                [(ref_id, vec, model_id) for ref_id, vec in updates],
            )

    async def ensure_index(self) -> bool:
        """Build the HNSW index once the catalog is big enough to need it; True if present."""
        stats = await self.stats(fresh=True)
        if stats.references <= self._hnsw_threshold:
            return False
        params = self._hnsw
        async with self._pool.acquire() as conn:
            await conn.execute(f"SET maintenance_work_mem = '{params.build_memory}'")
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON implants "
                f"USING hnsw (centroid vector_cosine_ops) "
                f"WITH (m = {params.m:d}, ef_construction = {params.ef_construction:d})"
            )
        return True


# Best reference per implant, then the k best implants.
_EXACT_SEARCH = f"""
WITH best AS (
    SELECT DISTINCT ON (r.implant_id) r.implant_id, r.id AS reference_id,
           r.embedding <=> $1 AS distance
    FROM reference_images r
    WHERE r.model_id = $2
    ORDER BY r.implant_id, r.embedding <=> $1
)
SELECT {_IMPLANT_COLUMNS}, best.reference_id, best.distance
FROM best JOIN implants i ON i.id = best.implant_id
WHERE i.archived_at IS NULL
ORDER BY best.distance, i.id
LIMIT $3
"""

# The index proposes implants (nearest centroids); each is then ranked by its best reference,
# compared exactly.
_ANN_SEARCH = f"""
WITH candidates AS MATERIALIZED (
    SELECT c.id FROM implants c ORDER BY c.centroid <=> $1 LIMIT $4
), best AS (
    SELECT DISTINCT ON (r.implant_id) r.implant_id, r.id AS reference_id,
           r.embedding <=> $1 AS distance
    FROM reference_images r
    WHERE r.implant_id IN (SELECT id FROM candidates) AND r.model_id = $2
    ORDER BY r.implant_id, r.embedding <=> $1
)
SELECT {_IMPLANT_COLUMNS}, best.reference_id, best.distance
FROM best JOIN implants i ON i.id = best.implant_id
WHERE i.archived_at IS NULL
ORDER BY best.distance, i.id
LIMIT $3
"""
