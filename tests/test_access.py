"""Closed by default: API keys (made, checked, revoked), the open-access switch, per-key and
per-address rate limits, the free-disk guard, and no result link for a caller without a key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from appliance.apikeys import ApiKeys, digest
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.components import Components
from tests.fixtures.appliance import asgi_client, variant

CLOSED = {"open_access": False}


@asynccontextmanager
async def app_client(comps: Components, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    access = dataclasses.replace(comps.settings.access, **changes)
    async with variant(comps, access=access) as built, asgi_client(built) as client:
        yield client


def sample() -> bytes:
    return png_bytes(render_patient_sample(DEMO_IMPLANTS[2], seed=5))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/implants"),
        ("GET", "/implants/1"),
        ("GET", "/references/1/image"),
        ("GET", "/submissions/00000000-0000-0000-0000-000000000000"),
        ("POST", "/upload"),
    ],
)
async def test_the_api_is_closed_without_a_key(
    demo_components: Components, method: str, path: str
) -> None:
    async with app_client(demo_components, **CLOSED) as client:
        answer = await client.request(method, path)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "api_key_required"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_key_opens_the_api_until_it_is_revoked(demo_components: Components) -> None:
    keys = ApiKeys(demo_components.database.pool)
    key, secret = await keys.create("clinic-front-desk")
    stored = await demo_components.database.pool.fetchval(
        "SELECT key_sha256 FROM api_keys WHERE id = $1", key.id
    )
    assert stored == digest(secret) and secret.encode() not in stored  # only the hash is kept

    async with app_client(demo_components, **CLOSED) as client:
        up = await client.post(
            "/upload", files={"file": ("s.png", sample(), "image/png")}, headers=bearer(secret)
        )
        assert up.status_code == 200, up.text
        assert (await client.get("/implants", headers=bearer(secret))).status_code == 200
        wrong = await client.get("/implants", headers=bearer(secret[:-2] + "xx"))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_api_key"

        await keys.revoke("clinic-front-desk")
        # A fresh app: the revocation is seen at once by a process that has no cached answer.
    async with app_client(demo_components, **CLOSED) as client:
        gone = await client.get("/implants", headers=bearer(secret))
        assert gone.status_code == 401 and gone.json()["error"] == "invalid_api_key"


async def test_open_access_serves_without_a_key(demo_components: Components) -> None:
    async with app_client(demo_components, open_access=True) as client:
        assert (await client.get("/implants")).status_code == 200


async def test_get_submission_hides_the_result_link_from_callers_without_a_key(
    demo_components: Components,
) -> None:
    _, secret = await ApiKeys(demo_components.database.pool).create("link-test")
    async with app_client(demo_components, open_access=True) as client:
        up = await client.post("/upload", files={"file": ("s.png", sample(), "image/png")})
        assert up.status_code == 200 and up.json()["result_url"]
        path = f"/submissions/{up.json()['submission_id']}"
        anonymous = (await client.get(path)).json()
        assert anonymous["result_url"] is None
        token = up.json()["result_url"].rsplit("/", 1)[-1]
        assert token not in str(anonymous)
        keyed = (await client.get(path, headers=bearer(secret))).json()
        assert keyed["result_url"] == up.json()["result_url"]


async def test_per_address_limit_answers_429_with_retry_after(
    demo_components: Components,
) -> None:
    async with app_client(
        demo_components, open_access=True, rate_limit_address_per_minute=16
    ) as client:
        statuses = [(await client.get("/implants")).status_code for _ in range(4)]
        limited = await client.get("/implants")
    assert statuses == [200, 200, 200, 200]  # a burst of a quarter of the minute's allowance
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


async def test_per_key_limit_answers_429(demo_components: Components) -> None:
    _, secret = await ApiKeys(demo_components.database.pool).create("limited-key")
    async with app_client(demo_components, **CLOSED, rate_limit_key_per_minute=4) as client:
        first = await client.get("/implants", headers=bearer(secret))
        second = await client.get("/implants", headers=bearer(secret))
    assert first.status_code == 200
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1


async def test_low_disk_refuses_new_images_with_507_and_health_says_so(
    demo_components: Components,
) -> None:
    huge = 1 << 62  # more free space than any disk has
    async with app_client(demo_components, open_access=True, min_free_disk_bytes=huge) as client:
        up = await client.post("/upload", files={"file": ("s.png", sample(), "image/png")})
        health = await client.get("/healthcheck")
    assert up.status_code == 507 and up.json()["error"] == "insufficient_storage"
    assert health.status_code == 503
    assert health.json()["components"]["storage"]["status"] == "down"


def test_apikey_cli_creates_lists_and_revokes(database_url: str, tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_")}
    env.update(RAIOX_DATABASE_URL=database_url, RAIOX_DATA_DIR=str(tmp_path))

    def raiox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", "apikey", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    made = raiox("create", "reception")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("raiox_") and len(secret) >= 40
    listed = raiox("list")
    assert "reception" in listed.stdout and secret not in listed.stdout
    assert secret[:10] in listed.stdout
    assert raiox("create", "reception").returncode != 0  # one active key per name
    assert raiox("revoke", "reception").returncode == 0
    assert "revoked" in raiox("list").stdout
