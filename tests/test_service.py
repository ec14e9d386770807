"""End to end through the HTTP app: real Postgres+pgvector, the real int8 model (random
weights), the synthetic demo catalog, local storage."""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample, render_reference
from appliance.components import Components


async def counts(comps: Components) -> tuple[int, int, int]:
    pool = comps.database.pool
    subs = await pool.fetchval("SELECT count(*) FROM submissions")
    matches = await pool.fetchval("SELECT count(*) FROM matches")
    files = sum(1 for p in comps.store.root.rglob("*") if p.is_file())
    return subs, matches, files


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bomb(side: int = 30000) -> bytes:
    """A tiny PNG whose header claims side x side pixels."""
    row = b"\x00" + b"\x00" * (side // 8)
    raw = zlib.compress(row * 16, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


async def upload(client: httpx.AsyncClient, data: bytes, name: str = "x.png", **fields: str) -> Any:
    return await client.post("/upload", files={"file": (name, data, "image/png")}, data=fields)


async def implant_id_of(comps: Components, name: str) -> int:
    value: int = await comps.database.pool.fetchval("SELECT id FROM implants WHERE name = $1", name)
    return value


async def test_reference_image_ranks_its_own_implant_first(
    client: httpx.AsyncClient, demo_components: Components
) -> None:
    implant = DEMO_IMPLANTS[9]
    response = await upload(client, png_bytes(render_reference(implant, 0)), dente="11")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"
    assert body["model"] == {"id": demo_components.encoder.model_id, "pretrained": False}
    top = body["matches"][0]
    assert top["implant"]["name"] == implant.name
    assert top["implant"]["synthetic"] is True
    assert top["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert [m["rank"] for m in body["matches"]] == [1, 2, 3]
    # the stored result is what was answered
    stored = await client.get(f"/submissions/{body['submission_id']}")
    assert stored.status_code == 200
    assert stored.json() == {**body, "result_url": None}  # the link goes to key holders only
    # ...and its image is queued for replication in the same write
    pool = demo_components.database.pool
    key = await pool.fetchval(
        "SELECT si.storage_key FROM submission_images si JOIN submissions s "
        "ON s.id = si.submission_id WHERE s.id = $1 AND si.status = 'done'",
        uuid.UUID(body["submission_id"]),
    )
    assert key and (demo_components.store.root / key).is_file()
    assert await pool.fetchval("SELECT state FROM outbox WHERE storage_key = $1", key) == "pending"


@pytest.mark.parametrize("alteration", ["jpeg", "resize"])
async def test_altered_copies_still_rank_their_implant_first(
    client: httpx.AsyncClient, alteration: str
) -> None:
    implant = DEMO_IMPLANTS[20]
    image = render_reference(implant, 0)
    if alteration == "jpeg":
        data = jpeg(image, quality=70)
    else:
        data = png_bytes(image.resize((image.width * 3 // 4, image.height * 3 // 4)))
    response = await upload(client, data)
    assert response.status_code == 200, response.text
    assert response.json()["matches"][0]["implant"]["name"] == implant.name


async def test_matches_are_distinct_sorted_and_agree_with_numpy(
    client: httpx.AsyncClient, demo_components: Components
) -> None:
    data = png_bytes(render_patient_sample(DEMO_IMPLANTS[3], seed=11))
    body = (await upload(client, data)).json()
    matches = body["matches"]
    ids = [m["implant"]["id"] for m in matches]
    assert len(set(ids)) == 3
    sims = [m["similarity"] for m in matches]
    assert sims == sorted(sims, reverse=True)
    # recompute with numpy over every stored reference vector
    query = await demo_components.embedder.embed(data)
    rows = await demo_components.database.pool.fetch(
        "SELECT implant_id, embedding FROM reference_images"
    )
    best: dict[int, float] = {}
    for row in rows:
        vec = row["embedding"].to_numpy().astype(np.float32)
        sim = float(vec @ query.vector / (np.linalg.norm(vec) * np.linalg.norm(query.vector)))
        best[row["implant_id"]] = max(best.get(row["implant_id"], -2.0), sim)
    expected = sorted(best.items(), key=lambda kv: -kv[1])[:3]
    assert ids == [implant_id for implant_id, _ in expected]
    assert sims == pytest.approx([s for _, s in expected], abs=1e-4)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"this is not an image", 415, "unsupported_image_type"),
        (b"", 400, "empty_image"),
        ("truncated", 400, "corrupt_image"),
        ("bomb", 413, "too_many_pixels"),
    ],
)
async def test_bad_images_get_clear_errors_and_leave_nothing(
    client: httpx.AsyncClient,
    demo_components: Components,
    payload: bytes | str,
    status: int,
    code: str,
) -> None:
    if payload == "truncated":
        full = jpeg(render_reference(DEMO_IMPLANTS[0], 0))
        payload = full[: len(full) // 2]
    elif payload == "bomb":
        payload = png_bomb()
    assert isinstance(payload, bytes)
    before = await counts(demo_components)
    response = await upload(client, payload)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["detail"]
    assert await counts(demo_components) == before


async def test_missing_file_and_oversize_body(
    client: httpx.AsyncClient, demo_components: Components
) -> None:
    before = await counts(demo_components)
    response = await client.post("/upload", data={"nome": "Dr. X"}, files={"other": ("a", b"b")})
    assert response.status_code == 422
    assert response.json()["error"] == "missing_file"
    limit = demo_components.settings.limits.max_bytes
    response = await upload(client, b"\x89PNG" + b"\x00" * (limit + 128 * 1024))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert await counts(demo_components) == before


async def test_implants_listing_and_lookup(client: httpx.AsyncClient) -> None:
    page = (await client.get("/implants", params={"limit": 10})).json()
    assert page["total"] == 32 and len(page["items"]) == 10
    second = (await client.get("/implants", params={"limit": 10, "offset": 10})).json()
    assert not {i["id"] for i in page["items"]} & {i["id"] for i in second["items"]}
    neodent = (await client.get("/implants", params={"manufacturer": "neodent"})).json()
    assert neodent["total"] == 8
    assert {i["manufacturer"] for i in neodent["items"]} == {"Neodent"}
    one = page["items"][0]
    detail = (await client.get(f"/implants/{one['id']}")).json()
    assert detail["name"] == one["name"] and len(detail["reference_image_urls"]) == 3
    image = await client.get(detail["reference_image_urls"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size[0] > 0
    missing = await client.get("/implants/999999")
    assert missing.status_code == 404 and missing.json()["error"] == "implant_not_found"
    unknown = await client.get("/submissions/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404


async def test_health_docs_and_metrics(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthcheck")
    assert health.status_code == 200
    body = health.json()
    assert body["model"]["pretrained"] is False
    assert set(body["components"]) == {"database", "model", "cache", "storage"}
    assert body["components"]["database"]["status"] == "ok"
    assert "password" not in health.text.lower()
    schema = (await client.get("/docs/openapi.json")).json()
    for path in ("/upload", "/implants", "/implants/{implant_id}", "/healthcheck"):
        assert path in schema["paths"]
    assert (await client.get("/docs")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert "raiox_stage_duration_seconds_bucket" in metrics
    assert 'raiox_identifications_total{outcome="ok",source="upload"}' in metrics


async def test_uploaded_image_is_kept_privately(
    client: httpx.AsyncClient, demo_components: Components
) -> None:
    data = png_bytes(render_patient_sample(DEMO_IMPLANTS[30], seed=3030))
    response = await client.post("/upload", files={"file": ("rx.png", data, "image/png")})
    assert response.status_code == 200, response.text
    files = [p for p in (demo_components.store.root / "uploads").rglob("*") if p.is_file()]
    assert data in [p.read_bytes() for p in files], "uploads are kept on local disk"
    assert all(p.stat().st_mode & 0o077 == 0 for p in files)
    assert (demo_components.store.root / "uploads").stat().st_mode & 0o077 == 0
