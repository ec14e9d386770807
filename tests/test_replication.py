"""Replication to a real S3 HTTP endpoint (moto server) from a real Postgres outbox.

Every test bucket is versioned: one version per key proves, on the server's side, that the
object was uploaded exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.components import Components, open_components
from appliance.database import Database
from appliance.settings import Settings, SpacesSettings, SyncSettings
from appliance.storage import ImageReader, LocalImageStore, StoredObject, sha256_hex
from appliance.sync import outbox
from appliance.sync.outbox import Outbox
from appliance.sync.spaces import SpacesClient
from appliance.sync.worker import Replicator, backoff, prune_local
from tests.fixtures.appliance import asgi_client
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY, S3Server, StallingRelay

MiB = 1024 * 1024
FAST = SyncSettings(
    max_attempts=5, lease_seconds=30, backoff_base_seconds=0.01, backoff_cap_seconds=0.05
)


@dataclass
class Rig:
    settings: Settings
    database: Database
    store: LocalImageStore
    spaces: SpacesClient
    s3: Any  # a plain boto3 client, to look at what arrived
    bucket: str

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.database.pool)

    def worker(self, **policy: Any) -> Replicator:
        return Replicator(self.outbox, self.store, self.spaces, dataclasses.replace(FAST, **policy))

    async def add(self, count: int, size: int = 2048, prefix: str = "uploads") -> dict[str, bytes]:
        """Images as the appliance receives them: on disk first, then an outbox row."""
        images = {}
        for _ in range(count):
            data = os.urandom(size)
            stored = await self.store.put(f"{prefix}/{sha256_hex(data)}.png", data, "image/png")
            async with self.database.pool.acquire() as conn:
                await outbox.enqueue(conn, stored)
            images[stored.key] = data
        return images

    def versions(self) -> Counter[str]:
        listed = self.s3.list_object_versions(Bucket=self.bucket).get("Versions", [])
        return Counter(v["Key"] for v in listed)

    def remote(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def assert_exactly_once(self, images: dict[str, bytes]) -> None:
        assert self.versions() == Counter(images.keys()), "every object uploaded exactly once"
        assert all(self.remote(k) == v for k, v in images.items())

    def multipart_in_progress(self) -> list[str]:
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    async def states(self) -> dict[str, int]:
        rows = await self.database.pool.fetch(
            "SELECT state, count(*) AS n FROM outbox GROUP BY state"
        )
        return {r["state"]: r["n"] for r in rows}


@pytest.fixture
async def rig(database_url: str, s3_server: S3Server) -> AsyncIterator[Rig]:
    s3_server.ensure_running()
    bucket = s3_server.new_bucket()
    data_dir = Path(tempfile.mkdtemp(prefix="raiox-test-sync-", dir="/tmp"))
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        spaces=SpacesSettings(
            endpoint=s3_server.endpoint,
            region="us-east-1",
            bucket=bucket,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
        ),
    )
    async with open_components(settings) as comps:  # the root: no model is loaded
        assert comps.spaces is not None, "wired from settings"
        yield Rig(settings, comps.database, comps.store, comps.spaces, s3_server.client(), bucket)
    shutil.rmtree(data_dir, ignore_errors=True)
    s3_server.ensure_running()


async def eventually(check: Callable[[], Any], seconds: float = 15.0) -> None:
    """Polls state that lives in another process (Postgres, the S3 server, a worker)."""
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail("timed out")


def test_backoff_is_full_jitter_under_an_exponential_ceiling_and_a_cap() -> None:
    policy = SyncSettings(backoff_base_seconds=2.0, backoff_cap_seconds=3600.0)
    for failures, ceiling in ((1, 2.0), (2, 4.0), (5, 32.0), (12, 3600.0), (10_000, 3600.0)):
        delays = [backoff(policy, failures) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling


async def test_uploads_private_verified_objects_and_presigns(rig: Rig) -> None:
    images = await rig.add(3)
    big = await rig.add(1, size=9 * MiB)  # above the multipart threshold
    images.update(big)
    worker = rig.worker()
    result = await worker.run_once()
    assert (result.replicated, result.failed, result.unavailable) == (4, 0, None)
    assert await rig.states() == {"done": 4}
    rig.assert_exactly_once(images)
    assert rig.multipart_in_progress() == []
    for key, data in images.items():
        head = rig.s3.head_object(Bucket=rig.bucket, Key=key)
        assert head["Metadata"]["sha256"] == sha256_hex(data)
        assert head["ContentType"] == "image/png"
        grants = rig.s3.get_object_acl(Bucket=rig.bucket, Key=key)["Grants"]
        assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
        assert not any("AllUsers" in str(g["Grantee"].get("URI", "")) for g in grants)
    big_key = next(iter(big))
    assert rig.s3.head_object(Bucket=rig.bucket, Key=big_key)["ETag"].endswith('-2"')
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(f"{rig.settings.spaces.endpoint}/{rig.bucket}/{big_key}")
        assert anonymous.status_code == 403, "nothing is public-read"
        url = await rig.spaces.presign_get(big_key, 60)
        assert ACCESS_KEY in url and SECRET_KEY not in url
        assert (await http.get(url)).content == images[big_key]
    again = rig.worker()
    assert (await again.run_once()).replicated == 0 and again.uploaded == []
    # a worker that died after the upload but before marking it done (its lease since run
    # out): confirmed, not sent again
    await rig.database.pool.execute(
        "UPDATE outbox SET state = 'pending', done_at = NULL, next_attempt_at = now()"
    )
    assert (await again.run_once()).replicated == 4 and again.uploaded == []
    rig.assert_exactly_once(images)


async def test_outage_then_every_object_arrives_exactly_once(rig: Rig, s3_server: S3Server) -> None:
    s3_server.stop()
    images = await rig.add(5)
    crashed = rig.worker(max_attempts=1)  # one item fault would kill a row: an outage must not
    for _ in range(2):
        result = await crashed.run_once()
        assert result.replicated == 0 and "EndpointConnectionError" in str(result.unavailable)
    rows = await rig.database.pool.fetch("SELECT state, attempts, last_error FROM outbox")
    assert {r["state"] for r in rows} == {"pending"} and {r["attempts"] for r in rows} == {0}
    assert any(r["last_error"] for r in rows)
    status = await rig.outbox.status()
    assert (status.pending, status.dead) == (5, [])
    assert status.oldest_pending is not None and "EndpointConnectionError" in str(status.last_error)
    assert ACCESS_KEY not in str(rows) and SECRET_KEY not in str(rows)

    # a restarted, long-running worker pauses with backoff and resumes once Spaces is back
    fresh = rig.worker(backoff_base_seconds=0.05, backoff_cap_seconds=0.2)
    loop = asyncio.create_task(fresh.run_forever(poll_seconds=0.05))
    await asyncio.sleep(1.5)
    assert await rig.states() == {"pending": 5}
    s3_server.start()
    try:
        await eventually(lambda: _all_done(rig, 5))
    finally:
        loop.cancel()
    rig.assert_exactly_once(images)
    assert sorted(fresh.uploaded) == sorted(images)


async def _all_done(rig: Rig, n: int) -> bool:
    return await rig.states() == {"done": n}


async def test_a_worker_killed_mid_upload_is_retried_after_its_lease(
    rig: Rig, s3_server: S3Server
) -> None:
    images = await rig.add(1, size=20 * MiB)  # three parts
    key = next(iter(images))
    relay = StallingRelay(s3_server.port, budget=10 * MiB)
    await relay.start()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RAIOX_DATA_DIR": str(rig.settings.data_dir),
        "RAIOX_DATABASE_URL": str(rig.settings.database_url),
        "RAIOX_SPACES_ENDPOINT": relay.endpoint,
        "RAIOX_SPACES_REGION": "us-east-1",
        "RAIOX_SPACES_BUCKET": rig.bucket,
        "RAIOX_SPACES_ACCESS_KEY": ACCESS_KEY,
        "RAIOX_SPACES_SECRET_KEY": SECRET_KEY,
        "RAIOX_SYNC_LEASE_SECONDS": "4",
        "RAIOX_SYNC_POLL_SECONDS": "0.2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", "sync", env=env, cwd=rig.settings.data_dir,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.wait_for(relay.stalled.wait(), 20)
        await eventually(lambda: _multipart_started(rig, key))
        leased = await rig.database.pool.fetchrow("SELECT * FROM outbox")
        assert leased["lease_owner"] and leased["state"] == "pending"
        # the stalled upload keeps its lease alive (a heartbeat every lease / 3)
        await eventually(lambda: _lease_renewed(rig, leased["next_attempt_at"]), seconds=5)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await relay.close()
    assert rig.versions() == Counter(), "nothing completed before the kill"
    worker = rig.worker()
    assert (await worker.run_once()).replicated == 0, "the dead worker's lease still holds"
    await eventually(lambda: _lease_expired(rig))
    assert (await worker.run_once()).replicated == 1
    rig.assert_exactly_once(images)
    assert rig.multipart_in_progress() == [], "the orphaned multipart upload was aborted"
    assert await rig.states() == {"done": 1}


async def _multipart_started(rig: Rig, key: str) -> bool:
    return rig.multipart_in_progress() == [key]


async def _lease_renewed(rig: Rig, leased_until: Any) -> bool:
    return bool(
        await rig.database.pool.fetchval("SELECT next_attempt_at FROM outbox") > leased_until
    )


async def _lease_expired(rig: Rig) -> bool:
    return bool(await rig.database.pool.fetchval("SELECT next_attempt_at <= now() FROM outbox"))


async def test_two_workers_never_upload_the_same_item(rig: Rig) -> None:
    images = await rig.add(20)
    a, b = rig.worker(), rig.worker()
    results = await asyncio.gather(a.run_once(), b.run_once())
    assert sum(r.replicated for r in results) == 20
    assert a.uploaded and b.uploaded, "both workers took part"
    assert Counter(a.uploaded + b.uploaded) == Counter(images.keys()), (
        "each item sent by one worker"
    )
    rig.assert_exactly_once(images)
    assert await rig.states() == {"done": 20}


async def test_item_faults_become_dead_letters_and_requeue(rig: Rig) -> None:
    images = await rig.add(3)
    corrupt, missing, healthy = images
    rig.store.path(corrupt).write_bytes(b"bit rot")
    rig.store.path(missing).unlink()
    worker = rig.worker(max_attempts=2)
    for _ in range(2):
        await worker.run_once()
        await asyncio.sleep(0.06)  # past the backoff cap
    status = await rig.outbox.status()
    errors = {d.storage_key: (d.attempts, d.last_error) for d in status.dead}
    assert errors.keys() == {corrupt, missing}
    assert errors[corrupt][0] == 2 and "no longer matches" in str(errors[corrupt][1])
    assert "missing" in str(errors[missing][1])
    assert rig.versions() == Counter({healthy: 1}), "a corrupt copy is never uploaded"
    rig.store.path(corrupt).unlink()
    await rig.store.put(corrupt, images[corrupt], "image/png")
    assert await rig.outbox.requeue_dead([corrupt]) == 1
    assert (await worker.run_once()).replicated == 1
    assert await rig.states() == {"done": 2, "dead": 1}
    rig.assert_exactly_once({k: images[k] for k in (corrupt, healthy)})


async def test_prune_keeps_what_spaces_lacks_and_serves_pruned_images_presigned(
    rig: Rig,
) -> None:
    patients = await rig.add(2, prefix="clientes/abcd1234")
    references = await rig.add(1, prefix="referencia")
    assert (await rig.worker().run_once()).replicated == 3
    kept, lost = patients
    reader = ImageReader(rig.store, rig.spaces, presign_seconds=60)
    assert await prune_local(rig.outbox, rig.store, rig.spaces, 7) == _report(0, 0, 0)
    await rig.database.pool.execute("UPDATE outbox SET created_at = now() - interval '10 days'")
    rig.s3.delete_object(Bucket=rig.bucket, Key=lost)  # the replica of one went missing
    report = await prune_local(rig.outbox, rig.store, rig.spaces, 7)
    assert report == _report(1, len(patients[kept]), 1)
    assert not rig.store.exists(kept) and rig.store.exists(lost)
    assert all(rig.store.exists(k) for k in references), "references stay local"
    url = await reader.url_or_bytes(kept)
    assert isinstance(url, str)
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == patients[kept]
    assert await reader.url_or_bytes(lost) == patients[lost]
    assert (await rig.worker().run_once()).replicated == 1, "the lost replica is sent again"
    assert rig.remote(lost) == patients[lost]
    status = await rig.outbox.status()
    assert (status.done, status.pruned, status.pending) == (3, 1, 0)


async def test_one_worker_prunes_at_a_time(rig: Rig) -> None:
    """Several sync replicas prune hourly: while one holds the prune lock the others skip,
    and the lock is free again once it is done."""
    patients = await rig.add(1, prefix="clientes/abcd1234")
    assert (await rig.worker().run_once()).replicated == 1
    await rig.database.pool.execute("UPDATE outbox SET created_at = now() - interval '10 days'")
    (key,) = patients
    async with rig.outbox.pruning() as first:
        assert first
        report = await prune_local(rig.outbox, rig.store, rig.spaces, 7)
        assert report.busy and report.pruned == 0
        assert rig.store.exists(key), "nothing looked at while another worker prunes"
    assert await prune_local(rig.outbox, rig.store, rig.spaces, 7) == _report(
        1, len(patients[key]), 0
    )
    assert not rig.store.exists(key)


def _report(pruned: int, freed: int, requeued: int) -> Any:
    from appliance.sync.worker import PruneReport

    return PruneReport(pruned, freed, requeued)


async def test_cli_drains_reports_and_requeues(rig: Rig) -> None:
    await rig.add(2)
    stored = StoredObject("uploads/" + "0" * 64 + ".png", "0" * 64, 1, "image/png")
    async with rig.database.pool.acquire() as conn:
        await outbox.enqueue(conn, stored)  # its local copy never existed
    env = _cli_env(rig, RAIOX_SYNC_MAX_ATTEMPTS="1")
    code, out = await _cli(env, "sync", "--once")
    assert code == 0 and "replicated 2; failed 1" in out
    code, out = await _cli(env, "sync", "status")
    assert "pending 0" in out and "replicated 2" in out
    assert "dead letters 1" in out and stored.key in out and "missing" in out
    assert SECRET_KEY not in out
    code, out = await _cli(env, "sync", "requeue")
    assert "requeued 1" in out
    assert await rig.states() == {"done": 2, "pending": 1}


def _cli_env(rig: Rig, **extra: str) -> dict[str, str]:
    s = rig.settings
    return {
        "PATH": os.environ.get("PATH", ""),
        "RAIOX_DATA_DIR": str(s.data_dir),
        "RAIOX_DATABASE_URL": str(s.database_url),
        "RAIOX_SPACES_ENDPOINT": str(s.spaces.endpoint),
        "RAIOX_SPACES_BUCKET": rig.bucket,
        "RAIOX_SPACES_ACCESS_KEY": ACCESS_KEY,
        "RAIOX_SPACES_SECRET_KEY": SECRET_KEY,
        **extra,
    }


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", *args, env=env, cwd=env["RAIOX_DATA_DIR"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


async def test_images_whose_local_copy_is_gone_are_served_from_spaces(
    demo_components: Components, s3_server: S3Server
) -> None:
    """The root wires the presigner from settings alone: a patient radiograph and a reference
    image whose local copies were pruned or lost answer 307 to a presigned Spaces URL."""
    s3_server.ensure_running()
    bucket = s3_server.new_bucket()
    spaces = SpacesSettings(
        endpoint=s3_server.endpoint, bucket=bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    settings = dataclasses.replace(demo_components.settings, spaces=spaces)
    radiograph = png_bytes(render_patient_sample(DEMO_IMPLANTS[21], seed=2121))
    moved: list[Path] = []
    async with open_components(settings) as comps, asgi_client(comps) as api:
        uploaded = await api.post("/upload", files={"file": ("rx.png", radiograph, "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        token = uploaded.json()["result_url"].rsplit("/", 1)[-1]
        patient_key = await comps.database.pool.fetchval(
            "SELECT si.storage_key FROM submission_images si JOIN submissions s "
            "ON s.id = si.submission_id WHERE s.result_token = $1",
            token,
        )
        ref = await comps.database.pool.fetchrow(
            "SELECT id, storage_key FROM reference_images ORDER BY id DESC LIMIT 1"
        )
        served = {
            f"/results/{token}/images/0": patient_key,
            f"/references/{ref['id']}/image": ref["storage_key"],
        }
        held = {key: comps.store.path(key).read_bytes() for key in served.values()}
        try:
            for key, data in held.items():  # replicated, then the local copy is gone
                s3_server.client().put_object(Bucket=bucket, Key=key, Body=data)
                path = comps.store.path(key)
                path.rename(path.with_suffix(".away"))
                moved.append(path)
            for url, key in served.items():
                response = await api.get(url)
                assert response.status_code == 307, (url, response.text)
                location = response.headers["location"]
                assert location.startswith(s3_server.endpoint) and "Signature" in location
                async with httpx.AsyncClient() as plain:
                    assert (await plain.get(location)).content == held[key]
        finally:
            for path in moved:
                path.with_suffix(".away").rename(path)
