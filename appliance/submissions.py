"""Submissions (one per upload or webhook delivery), their images and ranked matches.

A submission is written before the slow work starts, so a failure halfway leaves a row that
says what went wrong and can be retried, never a silent loss. (source, external_id) is unique:
a redelivered webhook finds the row its first delivery created.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
import numpy as np

from appliance.catalog.repository import Match, implant_from_row
from appliance.errors import AppError
from appliance.storage import StoredObject
from appliance.sync import outbox


class Source(StrEnum):
    """Where a submission came from (stored in submissions.source, a metrics label)."""

    UPLOAD = "upload"  # POST /upload
    CLI = "cli"  # raiox identify
    JOTFORM = "jotform"  # POST /jotform
    WEBHOOK = "webhook"  # POST /webhook

    @property
    def is_form(self) -> bool:
        """Form deliveries are kept per dentist (the seed's clientes/{id}/)."""
        return self in (Source.JOTFORM, Source.WEBHOOK)


class SubmissionNotFoundError(AppError):
    status_code = 404
    code = "submission_not_found"


@dataclass(frozen=True)
class Submitter:
    """Who sent the image. Health data: kept in the database, never in paths or logs."""

    dentist_name: str | None = None
    dentist_email: str | None = None
    patient_name: str | None = None
    tooth: str | None = None


@dataclass(frozen=True)
class SubmissionImage:
    id: int
    position: int
    status: str
    source_url: str | None = None
    sha256: str | None = None
    storage_key: str | None = None
    content_type: str | None = None
    model_id: str | None = None
    model_pretrained: bool | None = None
    error: str | None = None
    matches: list[Match] = field(default_factory=list)


@dataclass(frozen=True)
class Submission:
    id: uuid.UUID
    source: Source
    external_id: str | None
    result_token: str
    client_id: str | None
    status: str
    error: str | None
    tooth: str | None
    created_at: datetime
    images: list[SubmissionImage]
    # Set when the retention erased its personal data and images (appliance.retention).
    personal_data_erased_at: datetime | None = None


def client_id_for(email: str | None, secret: bytes) -> str | None:
    """A stable, path-safe id for a dentist that cannot be turned back into the email."""
    if not email or not email.strip():
        return None
    normalized = email.strip().lower().encode()
    return hmac.new(secret, normalized, hashlib.sha256).hexdigest()[:24]


class SubmissionRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        source: Source,
        external_id: str | None,
        submitter: Submitter,
        client_id: str | None,
        image_urls: Sequence[str | None],
        payload: dict[str, Any] | None = None,
    ) -> tuple[Submission, bool]:
        """Create the submission with one pending image per entry; (existing, False) if the
        (source, external_id) pair was already delivered — also when two deliveries race."""
        async with self._pool.acquire() as conn, conn.transaction():
            sub_id = await _insert_submission(
                conn, source, external_id, submitter, client_id, "processing", payload
            )
            if sub_id is None:
                existing = await conn.fetchval(
                    "SELECT id FROM submissions WHERE source = $1 AND external_id = $2",
                    source,
                    external_id,
                )
                return await self._load(conn, "s.id = $1", existing), False
            await conn.executemany(
                "INSERT INTO submission_images (submission_id, position, source_url, status) "
                "VALUES ($1, $2, $3, 'pending')",
                [(sub_id, n, url) for n, url in enumerate(image_urls)],
            )
            return await self._load(conn, "s.id = $1", sub_id), True

    async def record_result(
        self,
        image_id: int,
        stored: StoredObject,
        *,
        model_id: str,
        model_pretrained: bool,
        matches: Sequence[Match],
    ) -> None:
        """The image, its matches and its replication entry, all or nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _write_result(conn, image_id, stored, model_id, model_pretrained, matches)

    async def create_done(
        self,
        *,
        source: Source,
        submitter: Submitter,
        client_id: str | None,
        stored: StoredObject,
        model_id: str,
        model_pretrained: bool,
        matches: Sequence[Match],
    ) -> Submission:
        """A direct upload identified before anything was written: recorded whole by one
        statement (atomic, one round trip, one WAL flush) and answered from what was written,
        instead of the dozen round trips of insert, update and reload."""
        token = secrets.token_urlsafe(24)
        # Stored as real: answer with the value a later read returns.
        similarities = [float(np.float32(m.similarity)) for m in matches]
        row = await self._pool.fetchrow(
            _CREATE_DONE,
            source,
            token,
            client_id,
            submitter.dentist_name,
            submitter.dentist_email,
            submitter.patient_name,
            submitter.tooth,
            stored.sha256,
            stored.key,
            stored.content_type,
            model_id,
            model_pretrained,
            [m.rank for m in matches],
            [m.implant.id for m in matches],
            [m.reference_image_id for m in matches],
            similarities,
            stored.size,
        )
        ranked = [
            Match(m.rank, m.implant, m.reference_image_id, similarity)
            for m, similarity in zip(matches, similarities, strict=True)
        ]
        image = SubmissionImage(
            id=row["image_id"],
            position=0,
            status="done",
            sha256=stored.sha256,
            storage_key=stored.key,
            content_type=stored.content_type,
            model_id=model_id,
            model_pretrained=model_pretrained,
            matches=ranked,
        )
        return Submission(
            id=row["id"],
            source=source,
            external_id=None,
            result_token=token,
            client_id=client_id,
            status="done",
            error=None,
            tooth=submitter.tooth,
            created_at=row["created_at"],
            images=[image],
        )

    async def record_stored(self, image_id: int, stored: StoredObject) -> None:
        """The bytes are safe on disk even though identification failed: keep and replicate."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE submission_images SET sha256 = $2, storage_key = $3, content_type = $4 "
                "WHERE id = $1",
                image_id,
                stored.sha256,
                stored.key,
                stored.content_type,
            )
            await outbox.enqueue(conn, stored)

    async def mark_image_failed(self, image_id: int, error: str) -> None:
        await self._pool.execute(
            "UPDATE submission_images SET status = 'failed', error = $2 WHERE id = $1",
            image_id,
            error,
        )

    async def finish(self, submission_id: uuid.UUID) -> Submission:
        """Done when every image is done, else failed with the first image's reason."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE submissions s SET status = CASE WHEN f.failed = 0 THEN 'done' "
                "ELSE 'failed' END, error = f.reason, updated_at = now(), "
                "attempts = s.attempts + 1 FROM (SELECT count(*) FILTER (WHERE status <> 'done') "
                "AS failed, (array_agg(error ORDER BY position) FILTER (WHERE status <> 'done'))[1]"
                " AS reason FROM submission_images WHERE submission_id = $1) f WHERE s.id = $1",
                submission_id,
            )
            return await self._load(conn, "s.id = $1", submission_id)

    async def reopen(self, submission_id: uuid.UUID, stale_after_s: float = 600.0) -> bool:
        """Claim a failed submission (or one left 'processing' by a crash) for another try;
        False when another delivery or retry holds it, so no two ever process it at once, or
        when the retention erased its images (nothing is left to process)."""
        claimed = await self._pool.fetchval(
            "UPDATE submissions SET status = 'processing', error = NULL, updated_at = now() "
            "WHERE id = $1 AND personal_data_erased_at IS NULL AND (status = 'failed' OR "
            "(status = 'processing' AND updated_at < now() - make_interval(secs => $2))) "
            "RETURNING id",
            submission_id,
            stale_after_s,
        )
        return claimed is not None

    async def get(self, submission_id: uuid.UUID) -> Submission:
        async with self._pool.acquire() as conn:
            return await self._load(conn, "s.id = $1", submission_id)

    async def get_by_token(self, token: str) -> Submission:
        async with self._pool.acquire() as conn:
            return await self._load(conn, "s.result_token = $1", token)

    async def find_external(self, source: Source, external_id: str) -> Submission | None:
        async with self._pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT id FROM submissions WHERE source = $1 AND external_id = $2",
                source,
                external_id,
            )
            return None if found is None else await self._load(conn, "s.id = $1", found)

    async def failed_ids(self) -> list[uuid.UUID]:
        rows = await self._pool.fetch(
            "SELECT id FROM submissions WHERE status = 'failed' "
            "AND personal_data_erased_at IS NULL ORDER BY created_at"
        )
        return [r["id"] for r in rows]

    async def payload(self, submission_id: uuid.UUID) -> dict[str, Any] | None:
        raw = await self._pool.fetchval(
            "SELECT payload::text FROM submissions WHERE id = $1", submission_id
        )
        return None if raw is None else dict(json.loads(raw))

    async def _load(self, conn: asyncpg.Connection, where: str, value: Any) -> Submission:
        row = await conn.fetchrow(
            "SELECT id, source, external_id, result_token, client_id, status, error, tooth, "
            f"created_at, personal_data_erased_at FROM submissions s WHERE {where}",
            value,
        )
        if row is None:
            raise SubmissionNotFoundError("No such submission.")
        image_rows = await conn.fetch(
            "SELECT id, position, status, source_url, sha256, storage_key, content_type, "
            "model_id, model_pretrained, error FROM submission_images "
            "WHERE submission_id = $1 ORDER BY position",
            row["id"],
        )
        match_rows = await conn.fetch(
            "SELECT m.submission_image_id, m.rank, m.reference_image_id, m.similarity, "
            "i.id, i.name, i.manufacturer, i.type, i.platform, i.diameter_mm, i.length_mm, "
            "i.notes, i.synthetic FROM matches m JOIN implants i ON i.id = m.implant_id "
            "JOIN submission_images si ON si.id = m.submission_image_id "
            "WHERE si.submission_id = $1 ORDER BY m.submission_image_id, m.rank",
            row["id"],
        )
        by_image: dict[int, list[Match]] = {}
        for m in match_rows:
            by_image.setdefault(m["submission_image_id"], []).append(
                Match(
                    m["rank"], implant_from_row(m), m["reference_image_id"], float(m["similarity"])
                )
            )
        images = [SubmissionImage(**dict(r), matches=by_image.get(r["id"], [])) for r in image_rows]
        return Submission(**{**dict(row), "source": Source(row["source"])}, images=images)


async def _insert_submission(
    conn: asyncpg.Connection,
    source: Source,
    external_id: str | None,
    submitter: Submitter,
    client_id: str | None,
    status: str,
    payload: dict[str, Any] | None,
) -> Any:
    """The new submission's id, or None when (source, external_id) was delivered before."""
    return await conn.fetchval(
        "INSERT INTO submissions (source, external_id, result_token, client_id, dentist_name, "
        "dentist_email, patient_name, tooth, status, payload) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        "ON CONFLICT (source, external_id) DO NOTHING RETURNING id",
        source,
        external_id,
        secrets.token_urlsafe(24),
        client_id,
        submitter.dentist_name,
        submitter.dentist_email,
        submitter.patient_name,
        submitter.tooth,
        status,
        _json(payload),
    )


async def _write_result(
    conn: asyncpg.Connection,
    image_id: int,
    stored: StoredObject,
    model_id: str,
    model_pretrained: bool,
    matches: Sequence[Match],
) -> None:
    await conn.execute(
        "UPDATE submission_images SET sha256 = $2, storage_key = $3, content_type = $4, "
        "model_id = $5, model_pretrained = $6, status = 'done', error = NULL WHERE id = $1",
        image_id,
        stored.sha256,
        stored.key,
        stored.content_type,
        model_id,
        model_pretrained,
    )
    await conn.execute("DELETE FROM matches WHERE submission_image_id = $1", image_id)
    await conn.executemany(
        "INSERT INTO matches (submission_image_id, rank, implant_id, reference_image_id, "
        "similarity) VALUES ($1, $2, $3, $4, $5)",
        [(image_id, m.rank, m.implant.id, m.reference_image_id, m.similarity) for m in matches],
    )
    await outbox.enqueue(conn, stored)


# Submission, its one image, the matches and the replication entry. Data-modifying CTEs all
# run, referenced or not, and one statement commits or fails as a whole.
_QUEUED = outbox.ENQUEUE.format(key="$9", sha256="$8", size="$17", content_type="$10")
_CREATE_DONE = f"""
WITH sub AS (
    INSERT INTO submissions (source, result_token, client_id, dentist_name, dentist_email,
                             patient_name, tooth, status)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'done')
    RETURNING id, created_at
), image AS (
    INSERT INTO submission_images (submission_id, position, status, sha256, storage_key,
                                   content_type, model_id, model_pretrained)
    SELECT id, 0, 'done', $8, $9, $10, $11, $12 FROM sub
    RETURNING id
), ranked AS (
    INSERT INTO matches (submission_image_id, rank, implant_id, reference_image_id, similarity)
    SELECT image.id, m.rank, m.implant_id, m.reference_image_id, m.similarity
    FROM image, unnest($13::smallint[], $14::bigint[], $15::bigint[], $16::real[])
         AS m (rank, implant_id, reference_image_id, similarity)
), queued AS (
    {_QUEUED}
)
SELECT sub.id, sub.created_at, image.id AS image_id FROM sub, image
"""


def _json(payload: dict[str, Any] | None) -> str | None:
    return None if payload is None else json.dumps(payload)
