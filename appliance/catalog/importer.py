"""Loading the reference catalog: import from a manifest, re-embed with a new model, and the
synthetic demo catalog.

Import is idempotent: implants are matched by (manufacturer, name) and reference images by
their sha256, so re-running a manifest embeds only what is new or was made by another model.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from appliance.audit import record
from appliance.catalog.repository import Catalog, NewImplant
from appliance.errors import AppError
from appliance.identification.batching import EncoderOverloadedError
from appliance.identification.identify import Embedder, Embedding
from appliance.progress import Progress
from appliance.storage import LocalImageStore, reference_key, sha256_hex
from appliance.sync import outbox

ImageSource = Path | bytes

# Images in flight during an import: two of the encoder's batches of 8, so one can be prepared
# while the other runs (tests/bench/catalog.py: import_refs_per_s against encoder_images_per_s).
IMPORT_CONCURRENCY = 16
IMPORT_ATTEMPTS = 10


class ManifestError(AppError):
    status_code = 422
    code = "invalid_manifest"


@dataclass(frozen=True)
class ReferenceSpec:
    implant: NewImplant
    images: Sequence[ImageSource] = field(default_factory=list)


@dataclass(frozen=True)
class ImportReport:
    implants: int
    embedded: int
    skipped: int


def read_manifest(path: Path) -> list[ReferenceSpec]:
    """CSV (one row per image; rows of the same implant are merged) or JSON (a list of implants,
    each with `images`); image paths are relative to the manifest's folder."""
    if not path.is_file():
        raise ManifestError(f"No manifest at {path}.")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data["implants"] if isinstance(data, dict) else data
    else:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    merged: dict[tuple[str, str], tuple[NewImplant, list[ImageSource]]] = {}
    for n, row in enumerate(rows, start=1):
        implant = _implant_from(row, n)
        _, images = merged.setdefault((implant.manufacturer, implant.name), (implant, []))
        images.extend(path.parent / p for p in _image_paths(row))
    return [ReferenceSpec(implant, images) for implant, images in merged.values()]


def _implant_from(row: dict[str, Any], n: int) -> NewImplant:
    name, manufacturer = str(row.get("name") or "").strip(), str(row.get("manufacturer") or "")
    if not name or not manufacturer.strip():
        raise ManifestError(f"Entry {n} needs a name and a manufacturer.")
    return NewImplant(
        name=name,
        manufacturer=manufacturer.strip(),
        type=str(row.get("type") or "").strip(),
        platform=_opt_str(row.get("platform")),
        diameter_mm=_opt_float(row.get("diameter_mm"), n),
        length_mm=_opt_float(row.get("length_mm"), n),
        notes=_opt_str(row.get("notes")),
    )


def _image_paths(row: dict[str, Any]) -> list[str]:
    value = row.get("images", row.get("image"))
    if isinstance(value, list):
        return [str(v) for v in value]
    return [p.strip() for p in str(value or "").split(";") if p.strip()]


def _opt_str(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _opt_float(value: Any, n: int) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise ManifestError(f"Entry {n}: {value!r} is not a number.") from exc


def _read(source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as exc:
        raise ManifestError(f"Cannot read reference image {source}: {exc.strerror}.") from exc


async def import_catalog(
    specs: Sequence[ReferenceSpec],
    *,
    pool: asyncpg.Pool,
    catalog: Catalog,
    embedder: Embedder,
    store: LocalImageStore,
    progress: Callable[[int, str], Progress] = Progress,
) -> ImportReport:
    """Implants first, then their images IMPORT_CONCURRENCY at a time, so that the encoder
    gets full batches instead of one image per call."""
    model_id = embedder.encoder.model_id
    work: list[tuple[int, str, ImageSource]] = []
    for spec in specs:
        async with pool.acquire() as conn:
            implant_id = await catalog.upsert_implant(conn, spec.implant)
        work.extend((implant_id, spec.implant.name, source) for source in spec.images)
    bar = progress(len(work), "import")
    counts = {"embedded": 0, "skipped": 0}
    queue = iter(work)

    async def worker() -> None:
        for implant_id, name, source in queue:
            data = await asyncio.to_thread(_read, source)
            if await catalog.reference_model(implant_id, sha256_hex(data)) == model_id:
                counts["skipped"] += 1
            else:
                await add_reference_image(pool, catalog, embedder, store, implant_id, data)
                counts["embedded"] += 1
            bar.advance(note=name)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(IMPORT_CONCURRENCY, len(work))):
                group.create_task(worker())
    except ExceptionGroup as failed:  # the first failure, as a sequential import would raise it
        raise failed.exceptions[0] from None
    bar.close()
    await catalog.ensure_index()
    await catalog.stats(fresh=True)
    return ImportReport(len(specs), counts["embedded"], counts["skipped"])


async def add_reference_image(
    pool: asyncpg.Pool,
    catalog: Catalog,
    embedder: Embedder,
    store: LocalImageStore,
    implant_id: int,
    data: bytes,
    *,
    actor: str | None = None,
) -> int:
    """Embed, keep and record one reference image (queued for Spaces); searchable at once.
    With `actor`, the audit log records who added it, in the same transaction."""
    embedding = await _embed_patiently(embedder, data)
    key = reference_key(embedding.sha256, embedding.extension)
    stored = await store.put(key, data, embedding.content_type, sha256=embedding.sha256)
    async with pool.acquire() as conn, conn.transaction():
        ref_id = await catalog.add_reference(
            conn,
            implant_id=implant_id,
            storage_key=stored.key,
            sha256=stored.sha256,
            model_id=embedder.encoder.model_id,
            embedding=embedding.vector,
        )
        await outbox.enqueue(conn, stored)
        if actor is not None:
            await record(conn, actor, "reference.add", f"implant:{implant_id}", {"ref": ref_id})
    return ref_id


async def _embed_patiently(embedder: Embedder, data: bytes) -> Embedding:
    """An import is a batch job: a queue that does not clear in time (a busy machine) is waited
    for, not a failure, as it is for an HTTP request."""
    attempt = 1
    while True:
        try:
            return await embedder.embed(data)
        except EncoderOverloadedError as exc:
            if attempt >= IMPORT_ATTEMPTS:
                raise
            attempt += 1
            await asyncio.sleep(exc.retry_after_s)


async def reembed_catalog(
    *,
    catalog: Catalog,
    embedder: Embedder,
    store: LocalImageStore,
    progress: Callable[[int, str], Progress] = Progress,
) -> int:
    """Re-embed every reference made by another model, from the stored image bytes."""
    model_id = embedder.encoder.model_id
    refs = await catalog.references(not_model=model_id)
    bar = progress(len(refs), "reembed")
    for ref in refs:
        data = await store.read(ref.storage_key)
        if data is None:
            raise ManifestError(
                f"Reference image {ref.storage_key} is missing from local storage; "
                "restore it before re-embedding."
            )
        embedding = await embedder.embed(data)
        await catalog.update_embeddings([(ref.id, embedding.vector)], model_id)
        bar.advance()
    bar.close()
    await catalog.stats(fresh=True)
    return len(refs)


def demo_specs(views_per_implant: int = 3) -> list[ReferenceSpec]:
    """The synthetic demo catalog: rendered implants, labelled synthetic everywhere."""
    from appliance.catalog import demo as demo_catalog

    specs = []
    for implant in demo_catalog.DEMO_IMPLANTS:
        images: list[ImageSource] = [
            demo_catalog.png_bytes(demo_catalog.render_reference(implant, view))
            for view in range(views_per_implant)
        ]
        new = NewImplant(
            name=implant.name,
            manufacturer=implant.manufacturer,
            type=implant.type,
            platform=implant.platform,
            diameter_mm=implant.diameter_mm,
            length_mm=implant.length_mm,
            notes=demo_catalog.SYNTHETIC_NOTE,
            synthetic=True,
        )
        specs.append(ReferenceSpec(new, images))
    return specs
