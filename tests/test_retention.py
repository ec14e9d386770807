"""Patient-data retention (appliance.retention) on a real Postgres, a real S3 endpoint (moto
server) and the real app: what goes, what stays, where it runs and what it reports."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import generate_latest

from appliance import metrics
from appliance.accuracy import confirmed_scores
from appliance.app import create_app
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.components import Components
from appliance.doctor import reconcile
from appliance.intake.deliveries import Delivery, ImageSource
from appliance.retention import Retention
from appliance.settings import RetentionSettings, Settings, SpacesSettings, SyncSettings
from appliance.submissions import Source, Submission, Submitter
from appliance.sync import metrics as sync_metrics
from appliance.sync.worker import Replicator
from tests.fixtures.admin import ADMIN, STAFF, admin_components, sign_in
from tests.fixtures.appliance import asgi_client
from tests.fixtures.live_server import free_port
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY, S3Server

DAYS = 30
PATIENT, DENTIST, EMAIL = "Josefa Quaresma", "Dra. Lúcia Barbalho", "lucia@clinica.example"
PERSONAL = Submitter(dentist_name=DENTIST, dentist_email=EMAIL, patient_name=PATIENT, tooth="36")
FAST = SyncSettings(backoff_base_seconds=0.01, backoff_cap_seconds=0.05)


@pytest.fixture
async def comps(pg_server: Any, model_dir: Path, s3_server: S3Server) -> AsyncIterator[Components]:
    """An appliance of its own (the tests age and erase its submissions), replicating to a
    fresh bucket."""
    s3_server.ensure_running()
    spaces = SpacesSettings(
        endpoint=s3_server.endpoint,
        region="us-east-1",
        bucket=s3_server.new_bucket(),
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    built = await admin_components(pg_server, model_dir, spaces=spaces)
    yield built
    s3_server.ensure_running()
    await built.close()


def radiograph(seed: int) -> bytes:
    return png_bytes(render_patient_sample(DEMO_IMPLANTS[seed % 8], seed))


async def upload(comps: Components, data: bytes) -> Submission:
    return await comps.identifier.identify_upload(data, source=Source.UPLOAD, submitter=PERSONAL)


async def webhook(comps: Components, data: bytes, key: str) -> Submission:
    """A generic-webhook delivery: an Idempotency-Key, a payload and a per-dentist key."""
    delivery = Delivery(Source.WEBHOOK, key, PERSONAL, [ImageSource(data=data)], shape="json")
    outcome = await comps.intake.receive(delivery)
    assert outcome.submission.status == "done", outcome.submission.error
    return outcome.submission


async def age(comps: Components, *subs: Submission, days: int = DAYS + 1) -> None:
    await comps.database.pool.execute(
        "UPDATE submissions SET created_at = now() - make_interval(days => $2) "
        "WHERE id = ANY($1::uuid[])",
        [s.id for s in subs],
        days,
    )


async def replicate(comps: Components) -> None:
    assert comps.spaces is not None
    result = await Replicator(comps.outbox, comps.store, comps.spaces, FAST).run_once()
    assert result.unavailable is None and result.failed == 0


def key_of(sub: Submission) -> str:
    key = sub.images[0].storage_key
    assert key is not None
    return key


def in_spaces(comps: Components, s3_server: S3Server) -> set[str]:
    bucket = comps.settings.spaces.bucket
    listed = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"] for o in listed}


async def row(comps: Components, sub: Submission) -> dict[str, Any]:
    found = await comps.database.pool.fetchrow(
        "SELECT s.dentist_name, s.dentist_email, s.patient_name, s.client_id, s.external_id, "
        "s.payload::text AS payload, s.tooth, s.status, s.result_token, "
        "s.personal_data_erased_at, si.storage_key, si.sha256, si.source_url, si.model_id, "
        "(SELECT count(*) FROM matches m WHERE m.submission_image_id = si.id) AS matches "
        "FROM submissions s JOIN submission_images si ON si.submission_id = s.id WHERE s.id = $1",
        sub.id,
    )
    assert found is not None
    return dict(found)


def sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


async def test_off_by_default(comps: Components) -> None:
    """Nothing in the defaults turns it on, `raiox retention run` refuses without a number of
    days, and an api started with the defaults leaves an old submission whole."""
    assert Settings().retention == RetentionSettings(days=0) and not Settings().retention.enabled
    assert Settings.from_env({}, env_file=Path("/nonexistent")).retention.days == 0
    old = await upload(comps, radiograph(1))
    await age(comps, old, days=3650)
    code, _, err = await cli(comps, "retention", "run")
    assert code == 2 and "RAIOX_RETENTION_DAYS" in err
    async with AsyncTestClient(app=create_app(comps.settings)) as http:
        assert (await http.get("/healthcheck")).status_code == 200
        await asyncio.sleep(1.0)
    kept = await row(comps, old)
    assert kept["patient_name"] == PATIENT and kept["personal_data_erased_at"] is None
    assert comps.store.exists(key_of(old))
    assert await comps.database.pool.fetchval("SELECT count(*) FROM retention_state") == 0


async def test_old_submissions_lose_images_and_personal_data_recent_ones_keep_all(
    comps: Components, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    pool = comps.database.pool
    old_upload = await upload(comps, radiograph(1))
    old_hook = await webhook(comps, radiograph(2), "idem-key-0001")
    recent = await webhook(comps, radiograph(3), "idem-key-0002")
    assert key_of(old_hook).startswith("clientes/")  # kept per dentist
    image = old_upload.images[0]
    await comps.feedback.confirm(image.id, image.matches[1].implant.id, actor=STAFF)
    reference = await comps.feedback.promote(image.id, actor=STAFF)
    ref_key = await pool.fetchval(
        "SELECT storage_key FROM reference_images WHERE id = $1", reference
    )
    await replicate(comps)
    erased_keys = {key_of(old_upload), key_of(old_hook)}
    assert erased_keys | {key_of(recent), ref_key} <= in_spaces(comps, s3_server)
    await age(comps, old_upload, old_hook)
    scores = (await confirmed_scores(pool)).as_json()
    before = (
        sample("raiox_retention_erased_submissions_total"),
        sample("raiox_retention_erased_images_total"),
    )

    with caplog.at_level(logging.INFO, logger="appliance.retention"):
        report = await comps.retention.run(DAYS)

    assert (report.submissions, report.images, report.local_files) == (2, 2, 2)
    assert (report.spaces_copies, report.spaces_pending, report.deferred) == (2, 0, 0)
    for sub in (old_upload, old_hook):
        erased = await row(comps, sub)
        for field in (
            "dentist_name", "dentist_email", "patient_name", "client_id", "external_id",
            "payload", "storage_key", "sha256", "source_url",
        ):  # fmt: skip
            assert erased[field] is None, field
        assert erased["personal_data_erased_at"] is not None
        assert erased["status"] == "done" and erased["matches"] == 3  # the result stays
        assert erased["tooth"] == "36" and erased["model_id"]
    assert not any(comps.store.exists(key) for key in erased_keys)
    assert not erased_keys & in_spaces(comps, s3_server)
    assert not await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE storage_key = ANY($1::text[])", list(erased_keys)
    )
    kept = await row(comps, recent)
    assert (kept["patient_name"], kept["dentist_email"]) == (PATIENT, EMAIL)
    assert kept["external_id"] == "idem-key-0002" and kept["personal_data_erased_at"] is None
    assert comps.store.exists(key_of(recent)) and key_of(recent) in in_spaces(comps, s3_server)
    # The promoted reference is catalog data; the label and the accuracy are unchanged.
    assert comps.store.exists(ref_key) and ref_key in in_spaces(comps, s3_server)
    assert (await comps.feedback.labels(old_upload.id))[image.id].promoted_reference_id
    assert (await confirmed_scores(pool)).as_json() == scores
    # Nothing left for the reconciliation to complain about.
    doctor = await reconcile(pool, comps.store, grace_seconds=0)
    assert doctor.clean, doctor.lines()

    lines = [r for r in caplog.records if r.name == "appliance.retention"]
    assert len(lines) == 1
    assert "2 submissions older than 30 days (2 images, 2 local files" in lines[0].getMessage()
    assert lines[0].retention["submissions"] == 2  # type: ignore[attr-defined]
    for secret in (PATIENT, DENTIST, EMAIL, "idem-key", str(old_upload.id), str(old_hook.id)):
        assert secret not in lines[0].getMessage() and secret not in str(lines[0].__dict__)
    assert sample("raiox_retention_erased_submissions_total") - before[0] == 2
    assert sample("raiox_retention_erased_images_total") - before[1] == 2
    finished = await pool.fetchval("SELECT last_finished_at FROM retention_state")
    assert sample("raiox_retention_last_run_timestamp_seconds") == finished.timestamp()
    audit = await pool.fetch("SELECT actor, target, detail::text FROM audit_log "
                             "WHERE action = 'retention.run'")  # fmt: skip
    assert len(audit) == 1 and audit[0]["actor"] == "retention"
    assert json.loads(audit[0]["detail"])["submissions"] == 2 and PATIENT not in audit[0]["detail"]

    again = await comps.retention.run(DAYS)  # idempotent: nothing left to erase
    assert (again.submissions, again.images, again.local_files) == (0, 0, 0)
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE actor = 'retention'") == 1


async def test_a_file_shared_with_a_recent_submission_or_a_reference_is_kept(
    comps: Components, s3_server: S3Server
) -> None:
    pool = comps.database.pool
    shared = radiograph(4)
    old, recent = await upload(comps, shared), await upload(comps, shared)
    assert key_of(old) == key_of(recent)  # content-addressed: one file for both
    by_reference = await upload(comps, radiograph(5))
    await pool.execute(  # a reference made from the same bytes, under the same key
        "INSERT INTO reference_images (implant_id, storage_key, sha256, model_id, embedding) "
        "SELECT implant_id, $1, 'shared', model_id, embedding FROM reference_images LIMIT 1",
        key_of(by_reference),
    )
    await replicate(comps)
    await age(comps, old, by_reference)

    report = await comps.retention.run(DAYS)

    assert (report.submissions, report.images, report.local_files) == (2, 2, 0)
    assert report.spaces_copies == 0
    for sub in (old, by_reference):
        assert (await row(comps, sub))["storage_key"] is None
        assert comps.store.exists(key_of(sub)) and key_of(sub) in in_spaces(comps, s3_server)
    assert (await row(comps, recent))["storage_key"] == key_of(recent)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE storage_key = $1", key_of(old))


async def test_spaces_down_keeps_the_copies_pending_until_the_next_run(
    comps: Components, s3_server: S3Server
) -> None:
    pool = comps.database.pool
    old = await upload(comps, radiograph(6))
    await replicate(comps)
    await age(comps, old)
    s3_server.stop()
    report = await comps.retention.run(DAYS)
    assert (report.submissions, report.local_files, report.spaces_copies) == (1, 1, 1)
    assert report.spaces_pending == 1
    assert await pool.fetchval("SELECT storage_key FROM pending_erasures") == key_of(old)
    assert not comps.store.exists(key_of(old)) and (await row(comps, old))["storage_key"] is None
    s3_server.start()
    assert key_of(old) in in_spaces(comps, s3_server)  # still there, not forgotten

    report = await comps.retention.run(DAYS)  # nothing new is due; the copy goes now
    assert (report.submissions, report.spaces_pending) == (0, 0)
    assert key_of(old) not in in_spaces(comps, s3_server)
    assert await pool.fetchval("SELECT count(*) FROM pending_erasures") == 0


async def test_an_image_being_uploaded_is_left_for_the_next_run(comps: Components) -> None:
    pool = comps.database.pool
    busy, idle = await upload(comps, radiograph(7)), await upload(comps, radiograph(8))
    await age(comps, busy, idle)
    await pool.execute(  # a worker holds its lease: the upload is under way
        "UPDATE outbox SET lease_owner = 'worker-a', next_attempt_at = now() + interval '5 min' "
        "WHERE storage_key = $1",
        key_of(busy),
    )
    report = await comps.retention.run(DAYS)
    assert (report.submissions, report.deferred) == (1, 1)
    assert (await row(comps, busy))["patient_name"] == PATIENT and comps.store.exists(key_of(busy))
    assert (await row(comps, idle))["patient_name"] is None

    await pool.execute("UPDATE outbox SET lease_owner = NULL, next_attempt_at = now()")
    report = await comps.retention.run(DAYS)
    assert (report.submissions, report.deferred) == (1, 0)
    assert not comps.store.exists(key_of(busy))


async def test_batches_concurrent_runs_and_the_periodic_claim(comps: Components) -> None:
    """Small batches (one transaction each) and two runs at once erase every submission once;
    of several processes claiming the periodic run, one gets it per interval."""
    pool = comps.database.pool
    subs = []
    for _ in range(7):  # rows only, as a delivery that failed before its image arrived
        sub, _ = await comps.submissions.create(
            source=Source.WEBHOOK,
            external_id=None,
            submitter=PERSONAL,
            client_id=None,
            image_urls=["https://www.jotform.com/uploads/Josefa_Quaresma.png"],
        )
        subs.append(sub)
    await pool.execute("UPDATE submissions SET status = 'failed'")
    await age(comps, *subs)
    one, two = (Retention(pool, comps.store, comps.erasure, batch_size=2) for _ in range(2))
    reports = await asyncio.gather(one.run(DAYS), two.run(DAYS))
    assert sum(r.submissions for r in reports) == 7 and sum(r.images for r in reports) == 7
    left = await pool.fetchval(
        "SELECT count(*) FROM submissions s JOIN submission_images si ON si.submission_id = s.id "
        "WHERE s.personal_data_erased_at IS NULL OR si.source_url IS NOT NULL"
    )
    assert left == 0
    # An erased failed submission is not retried (nothing is left to process).
    assert await comps.submissions.failed_ids() == []
    assert not await comps.submissions.reopen(subs[0].id)

    claims = await asyncio.gather(*(one.run_if_due(DAYS, 3600) for _ in range(4)))
    assert sum(c is not None for c in claims) == 0  # the runs above count as started
    await pool.execute("UPDATE retention_state SET last_started_at = now() - interval '2 hours'")
    claims = await asyncio.gather(*(r.run_if_due(DAYS, 3600) for r in (one, two, one, two)))
    assert sum(c is not None for c in claims) == 1


async def test_dry_run_changes_nothing_and_the_cli_prints_json(comps: Components) -> None:
    pool = comps.database.pool
    old = await upload(comps, radiograph(9))
    await age(comps, old)
    await upload(comps, radiograph(10))
    code, out, err = await cli(comps, "retention", "run", "--dry-run", "--days", str(DAYS))
    assert code == 0, err
    preview = json.loads(out)
    assert preview["dry_run"] is True
    assert (preview["submissions"], preview["images"], preview["local_files"]) == (1, 1, 1)
    assert (await row(comps, old))["patient_name"] == PATIENT and comps.store.exists(key_of(old))
    assert await pool.fetchval("SELECT count(*) FROM retention_state") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE actor = 'retention'") == 0

    code, out, err = await cli(comps, "retention", "run", RAIOX_RETENTION_DAYS=str(DAYS))
    assert code == 0, err
    done = json.loads(out)
    logged = [json.loads(line) for line in err.splitlines() if '"retention"' in line]
    assert [entry["retention"]["submissions"] for entry in logged] == [1]
    assert (done["dry_run"], done["submissions"], done["local_files"]) == (False, 1, 1)
    assert (await row(comps, old))["patient_name"] is None and not comps.store.exists(key_of(old))


async def test_result_and_console_pages_say_the_image_was_removed(comps: Components) -> None:
    old = await upload(comps, radiograph(11))
    await age(comps, old)
    await comps.retention.run(DAYS)
    token = old.result_token
    async with asgi_client(comps) as http:
        page = await http.get(f"/results/{token}")
        assert page.status_code == 200
        assert "Imagem removida pela política de retenção de dados" in page.text
        assert 'id="retention-erased"' in page.text and "/images/0" not in page.text
        assert page.text.count('class="confirm-match"') == 3  # the result is still usable
        assert (await http.get(f"/results/{token}/images/0")).status_code == 404
        as_json = await http.get(f"/results/{token}.json")
        assert as_json.status_code == 200 and len(as_json.json()["matches"]) == 3
        await sign_in(http, ADMIN)
        console = await http.get(f"/admin/submissions/{old.id}")
        assert console.status_code == 200 and "retenção" in console.text
        assert "Josefa" not in console.text and 'class="radiograph"' not in console.text
        listed = await http.get("/admin/submissions/")
        assert listed.status_code == 200 and str(old.id) in listed.text
        scraped = (await http.get("/metrics")).text
    for name in (
        "raiox_retention_erased_submissions_total",
        "raiox_retention_erased_images_total",
        "raiox_retention_last_run_timestamp_seconds",
    ):
        assert name in scraped
        assert name in generate_latest(sync_metrics.REGISTRY).decode()  # the sync worker's too
    gauge = next(line for line in scraped.splitlines() if line.startswith(name))
    assert float(gauge.split()[-1]) > 0


async def test_the_api_process_runs_it_periodically(comps: Components) -> None:
    """An api started with RAIOX_RETENTION_DAYS erases what is due on its own."""
    old = await upload(comps, radiograph(12))
    await age(comps, old)
    on = dataclasses.replace(comps.settings, retention=RetentionSettings(days=DAYS))
    async with AsyncTestClient(app=create_app(on)) as http:
        assert (await http.get("/healthcheck")).status_code == 200
        finished = "SELECT last_finished_at FROM retention_state"
        for _ in range(200):
            if await comps.database.pool.fetchval(finished) is not None:
                break
            await asyncio.sleep(0.1)
        scraped = (await http.get("/metrics")).text
    assert (await row(comps, old))["patient_name"] is None
    assert not comps.store.exists(key_of(old))
    assert "raiox_retention_last_run_timestamp_seconds 0.0" not in scraped


async def test_the_sync_worker_runs_it_and_exports_the_counts(comps: Components) -> None:
    """`raiox sync` (the stack's long-lived worker, here without Spaces: exporting only) runs
    the retention too, and its /metrics shows what it erased."""
    old = await upload(comps, radiograph(13))
    await age(comps, old)
    port = free_port()
    env = {
        **base_env(comps),
        "RAIOX_RETENTION_DAYS": str(DAYS),
        "RAIOX_SYNC_METRICS_PORT": str(port),
        "RAIOX_HOST": "127.0.0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", "sync", env=env, cwd=str(comps.settings.data_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        finished = "SELECT last_finished_at FROM retention_state"
        for _ in range(300):
            if await comps.database.pool.fetchval(finished) is not None:
                break
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as http:
            scraped = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await proc.communicate()
    assert (await row(comps, old))["patient_name"] is None
    assert "raiox_retention_erased_submissions_total 1.0" in scraped
    assert "raiox_retention_erased_images_total 1.0" in scraped
    logged = [json.loads(line) for line in err.decode().splitlines() if '"retention"' in line]
    assert [entry["retention"]["submissions"] for entry in logged] == [1]


def base_env(comps: Components) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "RAIOX_DATA_DIR": str(comps.settings.data_dir),
        "RAIOX_DATABASE_URL": str(comps.settings.database_url),
    }


async def cli(comps: Components, *args: str, **env: str) -> tuple[int, str, str]:
    """`raiox ...` in a process of its own: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", *args, env={**base_env(comps), **env},
        cwd=str(comps.settings.data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()
