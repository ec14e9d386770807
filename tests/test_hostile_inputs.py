"""Inputs an attacker or a careless client sends: each answered with a 4xx and
`{"error", "detail"}`, never a 500, and nothing half-written."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.components import Components
from tests.fixtures.appliance import asgi_client, variant
from tests.test_service import counts

TOKEN = "webhook-token-for-hostile-tests-71c2"
BIG = "9223372036854775808"  # 2**63: one past Postgres' bigint


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body


@pytest.fixture(scope="module")
async def hooks(demo_components: Components) -> AsyncIterator[httpx.AsyncClient]:
    jotform = dataclasses.replace(
        demo_components.settings.jotform, webhook_token=TOKEN, max_images_per_delivery=3
    )
    async with variant(demo_components, jotform=jotform) as built, asgi_client(built) as client:
        yield client


@pytest.mark.parametrize(
    "path",
    [
        f"/implants/{BIG}",
        f"/implants?offset={BIG}",
        f"/references/{BIG}/image",
        "/implants/-1",
    ],
)
async def test_integers_past_int64_are_400(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.get(path), 400, "invalid_request")


async def test_file_part_without_filename_is_a_4xx(
    client: httpx.AsyncClient, demo_components: Components
) -> None:
    before = await counts(demo_components)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes(Image.new("L", (64, 64))) + b"\r\n--b--\r\n"
    )
    answer = await client.post(
        "/upload", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert 400 <= answer.status_code < 500
    assert_error(answer, answer.status_code)
    assert await counts(demo_components) == before


async def test_non_utf8_form_field_is_400(client: httpx.AsyncClient) -> None:
    sample = png_bytes(render_patient_sample(DEMO_IMPLANTS[1], seed=3))
    body = (
        b'--b\r\nContent-Disposition: form-data; name="nome"\r\n\r\n\xff\xfe\xc3\x28\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + sample + b"\r\n--b--\r\n"
    )
    answer = await client.post(
        "/upload", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert_error(answer, 400)


async def test_too_many_multipart_fields_is_413(client: httpx.AsyncClient) -> None:
    parts = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(2000)
    )
    answer = await client.post(
        "/upload",
        content=parts + b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(answer, 413)


@pytest.mark.parametrize(
    "raw", ["[" * 100_000, '{"q3_nome": ' + "9" * 5000 + "}", '{"a": ' + "[" * 100_000 + "}"]
)
async def test_hostile_raw_request_is_400(hooks: httpx.AsyncClient, raw: str) -> None:
    answer = await hooks.post(
        f"/jotform?token={TOKEN}",
        files={"rawRequest": (None, raw), "submissionID": (None, "6295223450435012345")},
    )
    assert_error(answer, 400, "malformed_payload")


async def test_deeply_nested_webhook_body_is_400(hooks: httpx.AsyncClient) -> None:
    body = '{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    answer = await hooks.post(
        f"/webhook?token={TOKEN}", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(answer, 400)


async def test_webhook_image_urls_are_capped(
    hooks: httpx.AsyncClient, demo_components: Components
) -> None:
    before = await counts(demo_components)
    urls = [f"https://www.jotform.com/uploads/u/1/2/{i}.png" for i in range(1000)]
    answer = await hooks.post(f"/webhook?token={TOKEN}", json={"image_urls": urls})
    assert_error(answer, 422, "too_many_images")
    assert await counts(demo_components) == before


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (31, 200)])
async def test_images_below_the_minimum_side_are_refused(
    client: httpx.AsyncClient, demo_components: Components, size: tuple[int, int]
) -> None:
    before = await counts(demo_components)
    answer = await client.post(
        "/upload", files={"file": ("tiny.png", png_bytes(Image.new("L", size)), "image/png")}
    )
    assert_error(answer, 422, "image_too_small")
    assert await counts(demo_components) == before


async def test_concurrent_deliveries_with_one_idempotency_key_get_the_result(
    hooks: httpx.AsyncClient,
) -> None:
    sample = png_bytes(render_patient_sample(DEMO_IMPLANTS[4], seed=11))
    import base64

    payload: dict[str, Any] = {"image_base64": base64.b64encode(sample).decode()}
    headers = {"Idempotency-Key": "hostile-concurrent-1"}
    answers = await asyncio.gather(
        *(hooks.post(f"/webhook?token={TOKEN}", json=payload, headers=headers) for _ in range(4))
    )
    ids = set()
    for answer in answers:
        if answer.status_code == 409:
            assert_error(answer, 409, "delivery_in_progress")
            assert answer.headers["Retry-After"]
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "done" and len(body["matches"]) == 3, body
        ids.add(body["submission_id"])
    assert len(ids) == 1
