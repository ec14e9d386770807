"""The console's use cases and its HTTP refusals, without a browser (tests/test_admin_browser.py
drives the same flows in Chromium): accounts, sessions and CSRF, catalog curation, feedback and
accuracy, erasure down to Spaces, CSV export, and the `raiox admin`/`raiox evaluate` commands."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.accounts import AccountLockedError, SignInRefusedError
from appliance.accuracy import confirmed_scores
from appliance.app import create_app
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample, render_reference
from appliance.catalog.repository import NewImplant
from appliance.components import Components
from appliance.metrics import CONFIRMATIONS
from appliance.settings import ServerSettings, SpacesSettings
from appliance.submissions import Submitter
from tests.fixtures.admin import ADMIN, PASSWORD, STAFF, admin_components, csrf_of, sign_in
from tests.fixtures.appliance import asgi_client, variant
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY, S3Server

# Implants beyond the 8 the fixture loads: never in the catalog unless a test adds them.
OUTSIDER = DEMO_IMPLANTS[20]


async def upload(comps: Components, data: bytes) -> Any:
    return await comps.identifier.identify_upload(
        data, source="upload", submitter=Submitter(patient_name="Maria", tooth="36")
    )


async def test_passwords_are_argon2id_and_failures_lock_the_account(
    admin_comps: Components,
) -> None:
    accounts = admin_comps.accounts
    await accounts.create_user("carla", PASSWORD, "staff", actor="test")
    stored = await admin_comps.database.pool.fetchval(
        "SELECT password_hash FROM admin_users WHERE username = 'carla'"
    )
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with pytest.raises(SignInRefusedError):
        await accounts.sign_in("nobody", PASSWORD)  # refused like a wrong password
    for _ in range(5):
        with pytest.raises(SignInRefusedError):
            await accounts.sign_in("carla", "wrong password!")
    with pytest.raises(AccountLockedError):
        await accounts.sign_in("carla", PASSWORD)  # even the right password, while locked
    await admin_comps.database.pool.execute(
        "UPDATE admin_users SET locked_until = now() WHERE username = 'carla'"
    )
    assert (await accounts.sign_in("carla", PASSWORD)).session.user.role == "staff"
    actions = await admin_comps.database.pool.fetch(
        "SELECT action FROM audit_log WHERE target = 'user:carla' ORDER BY id"
    )
    assert [r["action"] for r in actions] == ["user.create", "user.locked", "session.sign_in"]


async def test_session_cookies_are_signed_expire_and_end_at_sign_out(
    admin_comps: Components,
) -> None:
    accounts = admin_comps.accounts
    signed = await accounts.sign_in(ADMIN, PASSWORD)
    assert (await accounts.session(signed.cookie)) is not None
    token, _, signature = signed.cookie.rpartition(".")
    forged = f"{token[:-1]}{'A' if token[-1] != 'A' else 'B'}.{signature}"
    assert await accounts.session(forged) is None
    assert await accounts.session(token) is None  # unsigned
    await accounts.sign_out(signed.cookie)
    assert await accounts.session(signed.cookie) is None
    other = await accounts.sign_in(ADMIN, PASSWORD)
    await admin_comps.database.pool.execute(
        "UPDATE admin_sessions SET expires_at = now() - interval '1 second'"
    )
    assert await accounts.session(other.cookie) is None


async def test_console_refuses_without_session_csrf_or_role(admin_comps: Components) -> None:
    async with asgi_client(admin_comps) as http:
        response = await http.get("/admin/implants")
        assert response.status_code == 303 and response.headers["location"] == "/admin/login"
        login = await http.get("/admin/login")
        no_token = await http.post("/admin/login", data={"username": ADMIN, "password": PASSWORD})
        assert no_token.status_code == 403 and 'data-error="csrf_failed"' in no_token.text
        wrong = await http.post(
            "/admin/login",
            data={"csrf_token": csrf_of(login.text), "username": ADMIN, "password": "nope-nope"},
        )
        assert wrong.status_code == 401 and 'id="login-error"' in wrong.text
        assert "raiox_admin=" not in wrong.headers.get("set-cookie", "")

        await sign_in(http, STAFF)
        cookie = next(c for c in http.cookies.jar if c.name == "raiox_admin")
        assert cookie.path == "/admin" and not cookie.secure
        assert cookie.has_nonstandard_attr("HttpOnly")
        count = await admin_comps.database.pool.fetchval("SELECT count(*) FROM implants")
        forged = await http.post("/admin/implants", data={"name": "X", "manufacturer": "Y"})
        assert forged.status_code == 403 and 'data-error="csrf_failed"' in forged.text
        assert await admin_comps.database.pool.fetchval("SELECT count(*) FROM implants") == count
        assert (await http.get("/admin/audit")).status_code == 403
        assert (await http.get("/admin/submissions/export.csv")).status_code == 403


async def test_cookie_is_secure_behind_tls(admin_comps: Components) -> None:
    server = ServerSettings(public_base_url="https://raiox.example")
    async with variant(admin_comps, server=server) as comps:
        transport = httpx.ASGITransport(app=create_app(comps.settings, comps))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
            login = await http.get("/admin/login")
            response = await http.post(
                "/admin/login",
                data={"csrf_token": csrf_of(login.text), "username": ADMIN, "password": PASSWORD},
            )
            set_cookie = response.headers["set-cookie"].lower()
            assert response.status_code == 303
            assert response.headers["location"] == "https://raiox.example/admin"
            for flag in ("httponly", "secure", "samesite=strict", "path=/admin"):
                assert flag in set_cookie


async def test_curation_adds_searchable_references_and_archives_used_implants(
    admin_comps: Components,
) -> None:
    curation = admin_comps.curation
    new = NewImplant(name=OUTSIDER.name, manufacturer="Novo", type="tapered", diameter_mm=4.1)
    implant_id = await curation.create(new, actor=ADMIN)
    image = png_bytes(render_reference(OUTSIDER, 0))
    await curation.add_reference(implant_id, image, actor=ADMIN)
    first = (await upload(admin_comps, image)).images[0].matches[0]
    assert first.implant.id == implant_id and first.similarity > 0.999

    assert await curation.remove(implant_id, actor=ADMIN) == "archived"  # a match refers to it
    again = await upload(admin_comps, image)
    assert implant_id not in {m.implant.id for m in again.images[0].matches}
    await curation.restore(implant_id, actor=ADMIN)

    unused = await curation.create(NewImplant("Sem uso", "Novo", ""), actor=ADMIN)
    await curation.add_reference(
        unused, png_bytes(render_reference(DEMO_IMPLANTS[21], 0)), actor=ADMIN
    )
    unused_key = (await curation.detail(unused)).references[0].storage_key
    assert admin_comps.store.path(unused_key).exists()
    assert await curation.remove(unused, actor=ADMIN) == "deleted"
    assert not admin_comps.store.path(unused_key).exists()
    assert (
        await admin_comps.database.pool.fetchval(
            "SELECT count(*) FROM implants WHERE id = $1", unused
        )
        == 0
    )
    detail = await curation.detail(implant_id)
    ref = detail.references[0]
    await curation.remove_reference(ref.id, actor=STAFF)
    assert not admin_comps.store.path(ref.storage_key).exists()
    audit = await admin_comps.database.pool.fetch(
        "SELECT actor, action FROM audit_log WHERE target = $1 ORDER BY id", f"implant:{implant_id}"
    )
    assert [tuple(r) for r in audit] == [
        (ADMIN, "implant.create"),
        (ADMIN, "reference.add"),
        (ADMIN, "implant.archived"),
        (ADMIN, "implant.restore"),
        (STAFF, "reference.remove"),
    ]


async def test_confirm_promote_then_the_same_radiograph_ranks_first(
    pg_server: Any, model_dir: Path
) -> None:
    comps = await admin_components(pg_server, model_dir)
    try:
        pool = comps.database.pool
        target = DEMO_IMPLANTS[3]
        implant_id = await pool.fetchval("SELECT id FROM implants WHERE name = $1", target.name)
        sample = png_bytes(render_patient_sample(target, seed=11))
        before = await upload(comps, sample)
        image = before.images[0]
        assert (await confirmed_scores(pool)).overall.n == 0
        counted = CONFIRMATIONS.labels("none", "staff")._value.get()
        label = await comps.feedback.confirm(image.id, implant_id, actor=STAFF)
        expected_rank = next((m.rank for m in image.matches if m.implant.id == implant_id), None)
        assert label.rank == expected_rank
        scores = (await confirmed_scores(pool)).as_json()
        assert scores["n"] == 1 and scores["top1"] == (1.0 if expected_rank == 1 else 0.0)
        assert scores["per_manufacturer"][target.manufacturer]["n"] == 1
        if expected_rank is None:
            assert CONFIRMATIONS.labels("none", "staff")._value.get() == counted + 1

        ref_id = await comps.feedback.promote(image.id, actor=STAFF)
        assert await comps.feedback.promote(image.id, actor=STAFF) == ref_id  # once only
        after = await upload(comps, sample)
        first = after.images[0].matches[0]
        assert first.implant.id == implant_id and first.reference_image_id == ref_id
        await comps.feedback.confirm(after.images[0].id, implant_id, actor=STAFF)
        scores = (await confirmed_scores(pool)).as_json()
        assert scores["n"] == 2 and scores["top1"] >= 0.5 and scores["top3"] >= 0.5
    finally:
        await comps.close()


async def test_result_page_takes_the_dentists_confirmation(admin_comps: Components) -> None:
    submission = await upload(admin_comps, png_bytes(render_patient_sample(DEMO_IMPLANTS[2], 3)))
    token = submission.result_token
    chosen = submission.images[0].matches[1].implant
    async with asgi_client(admin_comps) as http:
        page = await http.get(f"/results/{token}")
        assert page.text.count('class="confirm-match"') == 3
        assert "form-action 'self'" in page.headers["content-security-policy"]
        done = await http.post(
            f"/results/{token}/feedback", data={"position": "0", "implant_id": str(chosen.id)}
        )
        assert done.status_code == 303
        page = await http.get(done.headers["location"])
        assert f'class="confirmed" data-implant="{chosen.id}"' in page.text
        refused = await http.post(
            f"/results/{token}/feedback", data={"position": "0", "implant_id": "999999"}
        )
        assert refused.status_code == 409 and 'id="feedback-error"' in refused.text
        unknown = await http.post(
            f"/results/{'x' * 32}/feedback", data={"position": "0", "implant_id": str(chosen.id)}
        )
        assert unknown.status_code == 404
    labels = await admin_comps.feedback.labels(submission.id)
    assert labels[submission.images[0].id].confirmed_by == "dentist"
    assert labels[submission.images[0].id].rank == 2


async def test_erasure_removes_rows_files_and_spaces_copies(
    pg_server: Any, model_dir: Path, s3_server: S3Server
) -> None:
    s3_server.ensure_running()
    bucket = s3_server.new_bucket()
    comps = await admin_components(
        pg_server,
        model_dir,
        spaces=SpacesSettings(
            endpoint=s3_server.endpoint,
            region="us-east-1",
            bucket=bucket,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
        ),
    )
    s3 = s3_server.client()
    try:
        pool = comps.database.pool
        kept = await upload(comps, png_bytes(render_patient_sample(DEMO_IMPLANTS[1], 5)))
        erased = []
        for seed in (1, 2):
            sub = await upload(comps, png_bytes(render_patient_sample(DEMO_IMPLANTS[0], seed)))
            key = sub.images[0].storage_key
            assert key is not None
            s3.put_object(Bucket=bucket, Key=key, Body=comps.store.path(key).read_bytes())
            erased.append((sub, key))
        first, key = erased[0]
        await comps.feedback.confirm(
            first.images[0].id, first.images[0].matches[0].implant.id, actor=STAFF
        )
        promoted = await comps.feedback.promote(first.images[0].id, actor=STAFF)
        ref_key = await pool.fetchval(
            "SELECT storage_key FROM reference_images WHERE id = $1", promoted
        )

        report = await comps.erasure.erase(first.id, actor=ADMIN)
        assert (report.images, report.local_files, report.remote_pending) == (1, 2, 0)
        for table, column in (("submissions", "id"), ("submission_images", "submission_id")):
            count = await pool.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1", first.id
            )
            assert count == 0, table
        assert (
            await pool.fetchval("SELECT count(*) FROM reference_images WHERE id = $1", promoted)
            == 0
        )
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE storage_key = ANY($1::text[])", [key, ref_key]
            )
            == 0
        )
        assert not comps.store.path(key).exists() and not comps.store.path(ref_key).exists()
        listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert key not in listed and erased[1][1] in listed
        assert comps.store.path(kept.images[0].storage_key or "").exists()
        audit = await pool.fetchrow(
            "SELECT actor, detail::text FROM audit_log WHERE action = 'submission.erase'"
        )
        assert audit["actor"] == ADMIN and "Maria" not in audit["detail"]

        s3_server.stop()  # Spaces down: the copy is remembered, not forgotten
        second, key2 = erased[1]
        report = await comps.erasure.erase(second.id, actor=ADMIN)
        assert report.remote_pending == 1 and not comps.store.path(key2).exists()
        s3_server.start()
        assert await comps.erasure.retry_remote() == 0
        listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert key2 not in listed
    finally:
        s3_server.ensure_running()
        await comps.close()


async def test_submission_list_filters_and_admin_csv_export(admin_comps: Components) -> None:
    await upload(admin_comps, png_bytes(render_patient_sample(DEMO_IMPLANTS[4], 8)))
    async with asgi_client(admin_comps) as http:
        await sign_in(http, ADMIN)
        listed = await http.get("/admin/submissions/", params={"tooth": "36", "source": "upload"})
        assert listed.status_code == 200 and 'data-status="done"' in listed.text
        none = await http.get("/admin/submissions/", params={"tooth": "11"})
        assert "data-submission=" not in none.text
        csv_text = (await http.get("/admin/submissions/export.csv", params={"tooth": "36"})).text
        header, *rows = csv_text.strip().splitlines()
        assert header.startswith("id,created_at,source,status,tooth") and rows
        assert all(",36," in row for row in rows) and "Maria" in csv_text
        bad = await http.get("/admin/submissions/", params={"since": "yesterday"})
        assert bad.status_code == 400


def _cli(comps: Components, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RAIOX_DATABASE_URL": str(comps.settings.database_url),
        "RAIOX_MODEL_DIR": str(comps.settings.model_dir),
        "RAIOX_DATA_DIR": str(comps.settings.data_dir),
        "RAIOX_ALLOW_UNTRAINED_MODEL": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_cli_creates_users_and_evaluates_leave_one_out(admin_comps: Components) -> None:
    made = await asyncio.to_thread(
        _cli,
        admin_comps,
        "admin",
        "create-user",
        "dora",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    assert (await admin_comps.accounts.sign_in("dora", PASSWORD)).session.user.is_admin
    short = await asyncio.to_thread(
        _cli, admin_comps, "admin", "create-user", "eva", "--password-stdin", stdin="short\n"
    )
    assert short.returncode == 2 and "at least" in short.stderr

    result = await asyncio.to_thread(_cli, admin_comps, "evaluate", "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert set(scores) == {"n", "top1", "top3", "per_manufacturer", "confusions"}
    live_refs = await admin_comps.database.pool.fetchval(
        "SELECT count(*) FROM reference_images r JOIN implants i ON i.id = r.implant_id "
        "WHERE i.archived_at IS NULL AND (SELECT count(*) FROM reference_images o "
        "WHERE o.implant_id = r.implant_id) > 1"
    )
    assert scores["n"] == live_refs and 0.0 <= scores["top1"] <= scores["top3"] <= 1.0


async def test_evaluate_scores_a_labelled_csv(admin_comps: Components, tmp_path: Path) -> None:
    rows = ["image,implant"]
    for n, implant in enumerate(DEMO_IMPLANTS[:3]):
        (tmp_path / f"{n}.png").write_bytes(png_bytes(render_reference(implant, 0)))
        rows.append(f"{n}.png,{implant.manufacturer} {implant.name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    result = await asyncio.to_thread(
        _cli, admin_comps, "evaluate", str(tmp_path / "labels.csv"), "--json"
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)  # the catalog's own reference images: found first
    assert scores["n"] == 3 and scores["top1"] == 1.0 and scores["confusions"] == []
    (tmp_path / "bad.csv").write_text("image,implant\n0.png,Nope\n")
    bad = await asyncio.to_thread(_cli, admin_comps, "evaluate", str(tmp_path / "bad.csv"))
    assert bad.returncode == 2 and "Nope" in bad.stderr


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


async def test_bulk_import_of_a_zip_shows_progress_and_refuses_bad_archives(
    admin_comps: Components,
) -> None:
    implant = DEMO_IMPLANTS[25]
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["name", "manufacturer", "type", "diameter_mm", "image"])
    for v in range(3):
        writer.writerow([f"Lote {implant.name}", "Importado", implant.type, 4.1, f"img/{v}.png"])
    csv_text = rows.getvalue()
    archive = _zip(
        {"catalog.csv": csv_text.encode()}
        | {f"img/{v}.png": png_bytes(render_reference(implant, v)) for v in range(3)}
    )
    async with asgi_client(admin_comps) as http:
        token = await sign_in(http, ADMIN)
        started = await http.post(
            "/admin/implants/import",
            data={"csrf_token": token},
            files={"file": ("catalog.zip", archive, "application/zip")},
        )
        assert started.status_code == 303, started.text
        for _ in range(300):
            job = await http.get(started.headers["location"])
            if 'data-state="running"' not in job.text:
                break
            assert 'http-equiv="refresh"' in job.text
            await asyncio.sleep(0.1)
        assert 'data-state="done"' in job.text and '<span id="import-done">3</span>' in job.text
        refs = await admin_comps.database.pool.fetchval(
            "SELECT count(*) FROM reference_images r JOIN implants i ON i.id = r.implant_id "
            "WHERE i.manufacturer = 'Importado'"
        )
        assert refs == 3
        for bad, why in (
            (_zip({"catalog.csv": csv_text.encode(), "../escape.png": b"x"}), "Caminho"),
            (_zip({"other.csv": b"name\n"}), "catalog.csv"),
            (b"not a zip", "zip"),
        ):
            refused = await http.post(
                "/admin/implants/import",
                data={"csrf_token": token},
                files={"file": ("catalog.zip", bad, "application/zip")},
            )
            assert refused.status_code == 422 and why in refused.text
    assert not list((admin_comps.settings.data_dir / "imports").iterdir())
