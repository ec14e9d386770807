"""Catalog curation for the staff console: find, create, edit, archive or delete implants, and
add or remove their reference images.

An implant that any submission refers to (a match or a confirmed label) is archived rather
than deleted, so old results stay readable; search never proposes an archived implant. A new
reference image is embedded and recorded at once, so the next identification already sees it.
Every change is written to the audit log in its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from appliance.audit import record
from appliance.catalog.importer import add_reference_image
from appliance.catalog.repository import (
    Catalog,
    Implant,
    ImplantNotFoundError,
    NewImplant,
    implant_from_row,
)
from appliance.errors import AppError
from appliance.identification.identify import Embedder
from appliance.storage import LocalImageStore

PAGE_SIZE = 50


class ImplantExistsError(AppError):
    status_code = 409
    code = "implant_exists"


class ReferenceNotFoundError(AppError):
    status_code = 404
    code = "reference_not_found"


class InvalidImplantError(AppError):
    status_code = 422
    code = "invalid_implant"


@dataclass(frozen=True)
class CatalogEntry:
    implant: Implant
    archived_at: datetime | None
    references: int


@dataclass(frozen=True)
class ReferenceInfo:
    id: int
    storage_key: str
    created_at: datetime


@dataclass(frozen=True)
class ImplantDetail:
    entry: CatalogEntry
    references: list[ReferenceInfo]
    used_by: int  # matches and confirmed labels that refer to it


@dataclass(frozen=True)
class ImplantQuery:
    text: str = ""
    manufacturer: str = ""
    archived: bool = False  # True lists only archived implants
    offset: int = 0


def validated(implant: NewImplant) -> NewImplant:
    if not implant.name.strip() or not implant.manufacturer.strip():
        raise InvalidImplantError("Nome e fabricante são obrigatórios.")
    for size in (implant.diameter_mm, implant.length_mm):
        if size is not None and not 0 < size < 100:
            raise InvalidImplantError("Diâmetro e comprimento são milímetros entre 0 e 100.")
    return implant


class Curation:
    def __init__(
        self,
        pool: asyncpg.Pool,
        catalog: Catalog,
        embedder: Embedder,
        store: LocalImageStore,
    ) -> None:
        self._pool = pool
        self._catalog = catalog
        self._embedder = embedder
        self._store = store

    async def find(self, query: ImplantQuery) -> tuple[list[CatalogEntry], int]:
        where = (
            "WHERE (i.archived_at IS NOT NULL) = $1 AND ($2 = '' OR lower(i.manufacturer) = "
            "lower($2)) AND ($3 = '' OR i.name ILIKE '%' || $3 || '%' OR i.type ILIKE "
            "'%' || $3 || '%' OR i.platform ILIKE '%' || $3 || '%')"
        )
        args = (query.archived, query.manufacturer.strip(), _like(query.text.strip()))
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(f"SELECT count(*) FROM implants i {where}", *args)
            rows = await conn.fetch(
                f"SELECT i.*, (SELECT count(*) FROM reference_images r WHERE r.implant_id = i.id)"
                f" AS refs FROM implants i {where} ORDER BY i.manufacturer, i.name "
                f"LIMIT {PAGE_SIZE} OFFSET $4",
                *args,
                query.offset,
            )
        return [CatalogEntry(implant_from_row(r), r["archived_at"], r["refs"]) for r in rows], total

    async def manufacturers(self) -> list[str]:
        rows = await self._pool.fetch("SELECT DISTINCT manufacturer FROM implants ORDER BY 1")
        return [r["manufacturer"] for r in rows]

    async def options(self) -> list[Implant]:
        """Every implant search may propose, for "pick the right one" lists."""
        rows = await self._pool.fetch(
            "SELECT * FROM implants WHERE archived_at IS NULL ORDER BY manufacturer, name"
        )
        return [implant_from_row(r) for r in rows]

    async def detail(self, implant_id: int) -> ImplantDetail:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM implants WHERE id = $1", implant_id)
            if row is None:
                raise ImplantNotFoundError(f"No implant with id {implant_id}.")
            refs = await conn.fetch(
                "SELECT id, storage_key, created_at FROM reference_images WHERE implant_id = $1 "
                "ORDER BY id",
                implant_id,
            )
            used_by = await conn.fetchval(_USED_BY, implant_id)
        entry = CatalogEntry(implant_from_row(row), row["archived_at"], len(refs))
        return ImplantDetail(entry, [ReferenceInfo(**dict(r)) for r in refs], used_by)

    async def create(self, implant: NewImplant, *, actor: str) -> int:
        implant = validated(implant)
        async with self._pool.acquire() as conn, conn.transaction():
            implant_id = await conn.fetchval(
                "INSERT INTO implants (name, manufacturer, type, platform, diameter_mm, "
                "length_mm, notes) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (manufacturer, name) DO NOTHING RETURNING id",
                *_fields(implant),
            )
            if implant_id is None:
                raise ImplantExistsError("Já existe um implante com este nome e fabricante.")
            await record(conn, actor, "implant.create", f"implant:{implant_id}", _named(implant))
        return int(implant_id)

    async def update(self, implant_id: int, implant: NewImplant, *, actor: str) -> None:
        implant = validated(implant)
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                found = await conn.fetchval(
                    "UPDATE implants SET name = $2, manufacturer = $3, type = $4, platform = $5, "
                    "diameter_mm = $6, length_mm = $7, notes = $8 WHERE id = $1 RETURNING id",
                    implant_id,
                    *_fields(implant),
                )
            except asyncpg.UniqueViolationError:
                raise ImplantExistsError(
                    "Já existe um implante com este nome e fabricante."
                ) from None
            if found is None:
                raise ImplantNotFoundError(f"No implant with id {implant_id}.")
            await record(conn, actor, "implant.update", f"implant:{implant_id}", _named(implant))

    async def remove(self, implant_id: int, *, actor: str) -> str:
        """'archived' when submissions refer to the implant, else 'deleted' (with its
        references)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT name, manufacturer FROM implants WHERE id = $1 FOR UPDATE", implant_id
            )
            if row is None:
                raise ImplantNotFoundError(f"No implant with id {implant_id}.")
            if await conn.fetchval(_USED_BY, implant_id):
                await conn.execute(
                    "UPDATE implants SET archived_at = coalesce(archived_at, now()) WHERE id = $1",
                    implant_id,
                )
                outcome = "archived"
                keys = []
            else:
                keys = await conn.fetch(
                    "DELETE FROM reference_images WHERE implant_id = $1 RETURNING storage_key",
                    implant_id,
                )
                await conn.execute("DELETE FROM implants WHERE id = $1", implant_id)
                outcome = "deleted"
            await record(conn, actor, f"implant.{outcome}", f"implant:{implant_id}", dict(row))
        for key in {r["storage_key"] for r in keys}:
            await self._unlink_unused(key)
        await self._catalog.stats(fresh=True)
        return outcome

    async def restore(self, implant_id: int, *, actor: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE implants SET archived_at = NULL WHERE id = $1 RETURNING id", implant_id
            )
            if found is None:
                raise ImplantNotFoundError(f"No implant with id {implant_id}.")
            await record(conn, actor, "implant.restore", f"implant:{implant_id}")

    async def add_reference(self, implant_id: int, data: bytes, *, actor: str) -> int:
        await self.detail(implant_id)  # 404 before any embedding work
        await self._catalog.check_model(self._embedder.encoder.model_id)
        ref_id = await add_reference_image(
            self._pool, self._catalog, self._embedder, self._store, implant_id, data, actor=actor
        )
        await self._catalog.stats(fresh=True)
        return ref_id

    async def remove_reference(self, reference_id: int, *, actor: str) -> int:
        """Delete one reference image; returns its implant's id. The local file goes too
        unless another reference (of another implant) holds the same bytes."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM reference_images WHERE id = $1 RETURNING implant_id, storage_key",
                reference_id,
            )
            if row is None:
                raise ReferenceNotFoundError(f"No reference image with id {reference_id}.")
            await record(
                conn,
                actor,
                "reference.remove",
                f"implant:{row['implant_id']}",
                {"ref": reference_id},
            )
        await self._unlink_unused(row["storage_key"])
        await self._catalog.stats(fresh=True)
        return int(row["implant_id"])

    async def _unlink_unused(self, key: str) -> None:
        """Keys are content addresses: another implant's reference may hold the same bytes."""
        if not await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM reference_images WHERE storage_key = $1)", key
        ):
            self._store.path(key).unlink(missing_ok=True)


_USED_BY = (
    "SELECT (SELECT count(*) FROM matches WHERE implant_id = $1) + "
    "(SELECT count(*) FROM image_labels WHERE implant_id = $1)"
)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fields(implant: NewImplant) -> tuple[object, ...]:
    return (
        implant.name.strip(),
        implant.manufacturer.strip(),
        implant.type.strip(),
        implant.platform,
        implant.diameter_mm,
        implant.length_mm,
        implant.notes,
    )


def _named(implant: NewImplant) -> dict[str, str]:
    return {"name": implant.name, "manufacturer": implant.manufacturer}
