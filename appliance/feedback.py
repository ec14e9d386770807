"""The feedback loop: a confirmed implant for a submitted radiograph, and its promotion to a
reference image of that implant.

The dentist confirms through the result link (the token is the only key needed), staff through
the console; a later confirmation replaces an earlier one. A promoted radiograph is embedded
and added to the catalog at once, so the next identification of a similar image finds it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from appliance import metrics
from appliance.audit import record
from appliance.catalog.importer import add_reference_image
from appliance.catalog.repository import Catalog
from appliance.errors import AppError
from appliance.identification.identify import Embedder
from appliance.storage import LocalImageStore

DENTIST = "dentist"


class LabelRefusedError(AppError):
    status_code = 409
    code = "label_refused"


class ImageNotFoundError(AppError):
    status_code = 404
    code = "image_not_found"


@dataclass(frozen=True)
class Label:
    submission_image_id: int
    implant_id: int
    implant_name: str
    manufacturer: str
    confirmed_by: str
    confirmed_at: datetime
    promoted_reference_id: int | None
    rank: int | None  # where the appliance ranked the confirmed implant; None: not proposed


class Feedback:
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

    async def confirm(self, image_id: int, implant_id: int, *, actor: str) -> Label:
        """Record `implant_id` as what image `image_id` really shows."""
        async with self._pool.acquire() as conn, conn.transaction():
            image = await conn.fetchrow(
                "SELECT si.status, si.submission_id FROM submission_images si WHERE si.id = $1 "
                "FOR UPDATE",
                image_id,
            )
            if image is None:
                raise ImageNotFoundError("No such radiograph.")
            if image["status"] != "done":
                raise LabelRefusedError("Only an identified radiograph can be confirmed.")
            live = await conn.fetchval(
                "SELECT archived_at IS NULL FROM implants WHERE id = $1", implant_id
            )
            if not live:
                raise LabelRefusedError("That implant is not in the catalog.")
            await conn.execute(
                "INSERT INTO image_labels (submission_image_id, implant_id, confirmed_by) "
                "VALUES ($1, $2, $3) ON CONFLICT (submission_image_id) DO UPDATE SET "
                "implant_id = EXCLUDED.implant_id, confirmed_by = EXCLUDED.confirmed_by, "
                "confirmed_at = now(), promoted_reference_id = CASE WHEN "
                "image_labels.implant_id = EXCLUDED.implant_id "
                "THEN image_labels.promoted_reference_id END",
                image_id,
                implant_id,
                actor,
            )
            label = await _label(conn, image_id)
            assert label is not None
            await record(
                conn,
                actor,
                "label.confirm",
                f"submission:{image['submission_id']}",
                {"image": image_id, "implant": implant_id, "rank": label.rank},
            )
        by = DENTIST if actor == DENTIST else "staff"
        metrics.CONFIRMATIONS.labels(str(label.rank or "none"), by).inc()
        return label

    async def confirm_by_token(self, token: str, position: int, implant_id: int) -> Label:
        image_id = await self._pool.fetchval(
            "SELECT si.id FROM submission_images si JOIN submissions s "
            "ON s.id = si.submission_id WHERE s.result_token = $1 AND si.position = $2",
            token,
            position,
        )
        if image_id is None:
            raise ImageNotFoundError("No such radiograph.")
        return await self.confirm(image_id, implant_id, actor=DENTIST)

    async def labels(self, submission_id: uuid.UUID) -> dict[int, Label]:
        """The confirmed labels of a submission's images, by image id."""
        async with self._pool.acquire() as conn:
            ids = await conn.fetch(
                "SELECT l.submission_image_id FROM image_labels l JOIN submission_images si "
                "ON si.id = l.submission_image_id WHERE si.submission_id = $1",
                submission_id,
            )
            found = [await _label(conn, r["submission_image_id"]) for r in ids]
        return {label.submission_image_id: label for label in found if label is not None}

    async def promote(self, image_id: int, *, actor: str) -> int:
        """Add a confirmed radiograph to its implant's references; returns the reference id."""
        async with self._pool.acquire() as conn:
            label = await _label(conn, image_id)
            key = await conn.fetchval(
                "SELECT storage_key FROM submission_images WHERE id = $1", image_id
            )
        if label is None:
            raise LabelRefusedError("Confirm the implant before promoting the radiograph.")
        if label.promoted_reference_id is not None:
            return label.promoted_reference_id
        data = await self._store.read(key) if key else None
        if data is None:
            raise LabelRefusedError("The radiograph is no longer on this appliance's disk.")
        await self._catalog.check_model(self._embedder.encoder.model_id)
        ref_id = await add_reference_image(
            self._pool, self._catalog, self._embedder, self._store, label.implant_id, data
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE image_labels SET promoted_reference_id = $2 WHERE submission_image_id = $1",
                image_id,
                ref_id,
            )
            await record(
                conn,
                actor,
                "label.promote",
                f"implant:{label.implant_id}",
                {"image": image_id, "ref": ref_id},
            )
        await self._catalog.stats(fresh=True)
        return ref_id


async def _label(conn: asyncpg.Connection, image_id: int) -> Label | None:
    row = await conn.fetchrow(
        "SELECT l.submission_image_id, l.implant_id, i.name AS implant_name, i.manufacturer, "
        "l.confirmed_by, l.confirmed_at, l.promoted_reference_id, (SELECT min(m.rank) FROM "
        "matches m WHERE m.submission_image_id = l.submission_image_id AND m.implant_id = "
        "l.implant_id) AS rank FROM image_labels l JOIN implants i ON i.id = l.implant_id "
        "WHERE l.submission_image_id = $1",
        image_id,
    )
    return None if row is None else Label(**dict(row))
