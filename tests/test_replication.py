"""Replication to a real S3 HTTP endpoint (moto server) from a real Postgres outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance import outbox
from appliance.components import Components
from appliance.database import Database
from appliance.replication import Replicator, SpacesClient, requeue_dead, sync_status
from appliance.settings import Settings
from appliance.storage import LocalImageStore, sha256_hex
from tests.fixtures.appliance import asgi_client
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY, S3Server

_buckets = itertools.count()


@dataclass
class Rig:
    database: Database
    store: LocalImageStore
    spaces: SpacesClient
    s3: Any  # boto3 client, for checking what arrived
    bucket: str

    def worker(self, **options: Any) -> Replicator:
        options.setdefault("max_attempts", 5)
        options.setdefault("backoff_base", 0.01)
        return Replicator(self.database.pool, self.store, self.spaces, **options)

    async def add_images(self, count: int, size: int = 2048) -> dict[str, bytes]:
        images = {}
        for _ in range(count):
            data = os.urandom(size)
            stored = await self.store.put(f"uploads/{sha256_hex(data)}.png", data, "image/png")
            async with self.database.pool.acquire() as conn:
                await outbox.enqueue(conn, stored)
            images[stored.key] = data
        return images

    def remote(self) -> dict[str, bytes]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            o["Key"]: self.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
            for o in listed
        }


@pytest.fixture
async def rig(database_url: str, s3_server: S3Server) -> AsyncIterator[Rig]:
    s3_server.ensure_running()
    bucket = f"raiox-test-{next(_buckets)}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    settings = Settings(
        database_url=database_url,
        spaces_endpoint=s3_server.endpoint,
        spaces_region="us-east-1",
        spaces_bucket=bucket,
        spaces_access_key=ACCESS_KEY,
        spaces_secret_key=SECRET_KEY,
    )
    database = await Database.open(settings)
    store = LocalImageStore(Path(tempfile.mkdtemp(prefix="raiox-test-images-", dir="/tmp")))
    yield Rig(database, store, SpacesClient(settings), client, bucket)
    await database.close()
    s3_server.ensure_running()


async def states(rig: Rig) -> dict[str, int]:
    rows = await rig.database.pool.fetch("SELECT state, count(*) AS n FROM outbox GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def test_uploads_private_verified_objects_and_presigns(rig: Rig) -> None:
    images = await rig.add_images(3)
    big = await rig.add_images(1, size=9 * 1024 * 1024)  # above the multipart threshold
    images.update(big)
    assert await rig.worker().run_once() == 4
    assert await states(rig) == {"done": 4}
    assert rig.remote() == images
    for key, data in images.items():
        head = rig.s3.head_object(Bucket=rig.bucket, Key=key)
        assert head["Metadata"]["sha256"] == sha256_hex(data)
        assert head["ContentType"] == "image/png"
        grants = rig.s3.get_object_acl(Bucket=rig.bucket, Key=key)["Grants"]
        assert not any("AllUsers" in str(g.get("Grantee", {}).get("URI", "")) for g in grants)
    key = next(iter(big))
    url = await rig.spaces.presign_get(key, 60)
    assert "Signature" in url or "X-Amz-Signature" in url
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == images[key]
    # a second pass finds nothing to do
    assert await rig.worker().run_once() == 0


async def test_outage_then_every_object_arrives_exactly_once(rig: Rig, s3_server: S3Server) -> None:
    s3_server.stop()
    images = await rig.add_images(5)
    worker = rig.worker()
    assert await worker.run_once() == 0
    rows = await rig.database.pool.fetch("SELECT attempts, last_error, state FROM outbox")
    assert all(r["attempts"] == 1 and r["last_error"] and r["state"] == "pending" for r in rows)
    status = await sync_status(rig.database.pool)
    assert status.pending == 5 and status.oldest_pending is not None
    s3_server.start()
    await asyncio.sleep(0.2)  # past the (tiny) backoff
    fresh = rig.worker()  # a restarted worker
    assert await fresh.run_once() == 5
    assert rig.remote() == images
    assert sorted(fresh.uploaded) == sorted(images)


async def test_a_crashed_workers_items_are_retried_after_the_lease(rig: Rig) -> None:
    images = await rig.add_images(3)
    crashed = rig.worker(lease_seconds=1.0)
    assert len(await crashed.claim()) == 3  # claimed, then the worker "dies"
    other = rig.worker()
    assert await other.run_once() == 0, "leased items are not taken by another worker"
    await asyncio.sleep(1.2)
    assert await other.run_once() == 3
    assert rig.remote() == images


async def test_two_workers_never_upload_the_same_item(rig: Rig) -> None:
    images = await rig.add_images(20)
    a, b = rig.worker(), rig.worker()
    await asyncio.gather(a.run_once(), b.run_once())
    both = a.uploaded + b.uploaded
    assert sorted(both) == sorted(images), "each item uploaded exactly once"
    assert await states(rig) == {"done": 20}


async def test_dead_letters_after_max_attempts_and_requeue(rig: Rig, s3_server: S3Server) -> None:
    s3_server.stop()
    await rig.add_images(2)
    worker = rig.worker(max_attempts=2)
    await worker.run_once()
    await asyncio.sleep(0.2)
    await worker.run_once()
    status = await sync_status(rig.database.pool)
    assert len(status.dead) == 2 and status.pending == 0
    assert all(error for _, _, error in status.dead)
    assert ACCESS_KEY not in str(status.dead) and SECRET_KEY not in str(status.dead)
    s3_server.start()
    assert await requeue_dead(rig.database.pool) == 2
    assert await worker.run_once() == 2
    assert await states(rig) == {"done": 2}


async def test_reference_served_through_spaces_when_the_local_copy_is_gone(
    demo_components: Components, s3_server: S3Server
) -> None:
    s3_server.ensure_running()
    settings = demo_components.settings.replace(
        spaces_endpoint=s3_server.endpoint,
        spaces_bucket="raiox-test-fallback",
        spaces_access_key=ACCESS_KEY,
        spaces_secret_key=SECRET_KEY,
    )
    client = s3_server.client()
    client.create_bucket(Bucket="raiox-test-fallback")  # type: ignore[attr-defined]
    comps = dataclasses.replace(demo_components, settings=settings, spaces=SpacesClient(settings))
    ref = await comps.database.pool.fetchrow(
        "SELECT id, storage_key FROM reference_images ORDER BY id DESC LIMIT 1"
    )
    path = comps.store.path(ref["storage_key"])
    data = path.read_bytes()
    client.put_object(Bucket="raiox-test-fallback", Key=ref["storage_key"], Body=data)  # type: ignore[attr-defined]
    moved = path.with_suffix(".away")
    path.rename(moved)
    try:
        async with asgi_client(comps) as api:
            response = await api.get(f"/references/{ref['id']}/image")
            assert response.status_code == 307, response.text
            location = response.headers["location"]
            assert location.startswith(s3_server.endpoint) and "Signature" in location
        async with httpx.AsyncClient() as plain:
            assert (await plain.get(location)).content == data
    finally:
        moved.rename(path)
