"""POST /jotform and /webhook end to end: multipart bodies built the way Jotform builds them,
upload files served by a real HTTP server on loopback, the real app, model, Postgres and disk."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_reference
from appliance.cli.main import app as cli_app
from appliance.components import Components
from appliance.settings import ImageLimits, JotformSettings
from tests.fixtures.appliance import asgi_client, variant
from tests.fixtures.uploads_server import Route, UploadsServer

TOKEN = "webhook-token-for-tests-3b9f0c"
API_KEY = "jotform-api-key-for-tests-77ad1e"
FORM_ID = "251488352368668"
USERNAME = "clinica_raiox"
_ids = itertools.count(1)


def new_submission_id() -> str:
    return f"62952234504350{next(_ids):05d}"


def reference_png(index: int) -> bytes:
    return png_bytes(render_reference(DEMO_IMPLANTS[index], 0))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


UNREACHABLE = f"http://127.0.0.1:{closed_port()}"


def intake_changes(server: UploadsServer, **jotform: Any) -> dict[str, Any]:
    """Settings parts with webhooks on, files from `server`, and `jotform` changes."""
    part = JotformSettings(
        webhook_token=TOKEN,
        api_key=API_KEY,
        upload_origins=(server.origin, UNREACHABLE),
        download_timeout_seconds=1.5,
    )
    return {
        "jotform": dataclasses.replace(part, **jotform),
        "limits": ImageLimits(max_bytes=1_000_000),
    }


@asynccontextmanager
async def intake_client(
    comps: Components, server: UploadsServer, **jotform: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        variant(comps, **intake_changes(server, **jotform)) as built,
        asgi_client(built) as client,
    ):
        yield client


@pytest.fixture(scope="module")
async def jot(
    demo_components: Components, uploads_server: UploadsServer
) -> AsyncIterator[httpx.AsyncClient]:
    async with intake_client(demo_components, uploads_server) as client:
        yield client


def upload_file(
    server: UploadsServer, submission_id: str, name: str, data: bytes, **knobs: Any
) -> str:
    path = f"/uploads/{USERNAME}/{FORM_ID}/{submission_id}/{name}"
    return server.serve(path, Route(body=data, content_type="image/png", **knobs))


def jotform_parts(
    submission_id: str,
    answers: dict[str, Any],
    uploads: dict[str, tuple[int, list[str]]],
    **overrides: str,
) -> list[tuple[str, tuple[None, str]]]:
    """The multipart fields of a real Jotform webhook, rawRequest encoded as Jotform does."""
    raw: dict[str, Any] = {
        "slug": f"submit/{FORM_ID}",
        "jsExecutionTracker": "build-date-1753686119291=>init-started:1753686122115",
        "submitSource": "form",
        "submitDate": "1753713144931",
        "buildDate": "1753686119291",
        "uploadServerUrl": "https://upload.jotform.com/upload",
        "eventObserver": "1",
        **answers,
        "event_id": f"1753713135766_{FORM_ID}_a4qAzSy",
        "timeToSubmit": "9",
    }
    if uploads:
        raw["temp_upload"] = {
            f"q{qid}_{name}": [u.rsplit("/", 1)[-1] + "#jotformfs-bc35e2a4de105#0198" for u in urls]
            for name, (qid, urls) in uploads.items()
        }
        raw["file_server"] = "jotformfs-bc35e2a4de105#0198"
    raw["validatedNewRequiredFieldIDs"] = '{"new":1}'
    raw["path"] = f"/submit/{FORM_ID}"
    raw.update({name: urls for name, (_, urls) in uploads.items()})
    fields = {
        "action": "",
        "webhookURL": f"https://raiox.example/jotform?token={TOKEN}",
        "username": USERNAME,
        "formID": FORM_ID,
        "type": "WEB",
        "customParams": "",
        "product": "",
        "formTitle": "Raiox — identificação de implante",
        "customTitle": "",
        "submissionID": submission_id,
        "event": "",
        "documentID": "",
        "teamID": "",
        "subject": "",
        "isSilent": "",
        "customBody": "",
        "rawRequest": json.dumps(raw).replace("/", "\\/"),
        "fromTable": "",
        "appID": "",
        "pretty": "Nome:Ana Souza, E-mail:ana@example.com, Dente:36, Radiografia:rx.png",
        "unread": "",
        "parent": "",
        "ip": "203.0.113.9",
        **overrides,
    }
    return [(key, (None, value)) for key, value in fields.items()]


SEED_ANSWERS = {
    "q3_nome": {"first": "Ana", "last": "Souza"},
    "q4_email": "Ana.Souza@Example.com",
    "q5_paciente": "João da Silva",
    "q6_dente": "36",
}


async def post_jotform(
    client: httpx.AsyncClient, parts: list[Any], token: str | None = TOKEN
) -> httpx.Response:
    params = {"token": token} if token is not None else {}
    return await client.post("/jotform", params=params, files=parts)


async def count_rows(comps: Components) -> tuple[int, int]:
    pool = comps.database.pool
    return (
        await pool.fetchval("SELECT count(*) FROM submissions"),
        await pool.fetchval("SELECT count(*) FROM submission_images"),
    )


async def stored(comps: Components, submission_id: str) -> Any:
    return await comps.database.pool.fetchrow(
        "SELECT s.*, s.payload::text AS payload_text FROM submissions s "
        "WHERE source = 'jotform' AND external_id = $1",
        submission_id,
    )


async def test_real_jotform_payload_is_identified_and_kept_privately(
    jot: httpx.AsyncClient,
    demo_components: Components,
    uploads_server: UploadsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sid = new_submission_id()
    url = upload_file(uploads_server, sid, "rx%201.png", reference_png(4))
    response = await post_jotform(
        jot, jotform_parts(sid, SEED_ANSWERS, {"radiografia": (7, [url])})
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for private in (TOKEN, "Ana.Souza", "Souza", "João", "rx%201.png", "/uploads/"):
        assert private not in logged  # no token, name, email or file URL in any log
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"
    assert body["model"]["pretrained"] is False
    assert [m["rank"] for m in body["matches"]] == [1, 2, 3]
    assert body["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[4].name
    assert body["result_url"].startswith("/results/")
    row = await stored(demo_components, sid)
    assert (row["dentist_name"], row["dentist_email"], row["patient_name"], row["tooth"]) == (
        "Ana Souza",
        "Ana.Souza@Example.com",
        "João da Silva",
        "36",
    )
    # the file was fetched once, without the API key (loopback is not a Jotform host)
    path = url.removeprefix(uploads_server.origin)
    seen = uploads_server.requests_to(path)
    assert len(seen) == 1
    assert "apikey" not in seen[0].path.lower()
    assert "apikey" not in {h.lower() for h in seen[0].headers}
    # kept under clientes/{client_id}/, an HMAC of the email: no email in any path
    image_row = await demo_components.database.pool.fetchrow(
        "SELECT storage_key FROM submission_images WHERE submission_id = $1", row["id"]
    )
    key = image_row["storage_key"]
    assert key.startswith(f"clientes/{row['client_id']}/") and len(row["client_id"]) == 24
    assert "ana" not in key.lower() and "example" not in key.lower()
    assert demo_components.store.path(key).read_bytes() == reference_png(4)
    # the stored payload keeps what a retry needs and no secret
    assert TOKEN not in row["payload_text"] and API_KEY not in row["payload_text"]
    assert json.loads(row["payload_text"]) == {"shape": "jotform", "form_id": FORM_ID}


async def test_seed_multipart_shape_and_stable_client_id(
    jot: httpx.AsyncClient, demo_components: Components
) -> None:
    sid = new_submission_id()
    response = await jot.post(
        "/jotform",
        params={"token": TOKEN},
        data={
            "nome": "Dr. X",
            "email": " ana.souza@example.COM ",
            "dente": "11",
            "submissionID": sid,
        },
        files={"file": ("rx.png", reference_png(9), "image/png")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[9].name
    row = await stored(demo_components, sid)
    assert json.loads(row["payload_text"])["shape"] == "seed"
    again = new_submission_id()
    response = await jot.post(
        "/jotform",
        params={"token": TOKEN},
        data={"email": "Ana.Souza@Example.com", "submissionID": again},
        files={"file": ("rx.png", reference_png(10), "image/png")},
    )
    assert response.status_code == 200, response.text
    other = await stored(demo_components, again)
    assert row["client_id"] and other["client_id"] == row["client_id"]  # however it was typed


async def test_unusual_question_names_through_the_field_map(
    demo_components: Components, uploads_server: UploadsServer
) -> None:
    sid = new_submission_id()
    rx = upload_file(uploads_server, sid, "foto.png", reference_png(12))
    other = upload_file(uploads_server, sid, "encaminhamento.png", reference_png(13))
    answers = {
        "q12_nomeDoDentista": {"prefix": "Dra.", "first": "Bia", "last": "Reis"},
        "q13_contato13": "bia@example.com",
        "q14_quemE": "Maria",
        "q20_numeroDoDente": "47",
    }
    field_map = (
        ("nomeDoDentista", "nome"),
        ("q13", "email"),
        ("q14_quemE", "paciente"),
        ("numeroDoDente", "dente"),
        ("fotoRx", "file"),
    )
    async with intake_client(demo_components, uploads_server, field_map=field_map) as c:
        uploads = {"fotoRx": (30, [rx]), "encaminhamento": (31, [other])}
        response = await post_jotform(c, jotform_parts(sid, answers, uploads))
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1
    assert response.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[12].name
    row = await stored(demo_components, sid)
    assert (row["dentist_name"], row["dentist_email"], row["patient_name"], row["tooth"]) == (
        "Dra. Bia Reis",
        "bia@example.com",
        "Maria",
        "47",
    )
    assert uploads_server.hits(other.removeprefix(uploads_server.origin)) == 0


async def test_several_files_each_identified(
    jot: httpx.AsyncClient, uploads_server: UploadsServer
) -> None:
    sid = new_submission_id()
    picks = [2, 17, 25]
    urls = [upload_file(uploads_server, sid, f"rx{i}.png", reference_png(i)) for i in picks]
    # one more behind an allowed redirect (same origin): followed
    hop = uploads_server.serve(f"/go/{sid}", status=302, redirect_to=urls[2])
    parts = jotform_parts(sid, SEED_ANSWERS, {"radiografias": (7, urls[:2]), "extra": (8, [hop])})
    response = await post_jotform(jot, parts)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [i["status"] for i in images] == ["done"] * 3
    tops = [i["matches"][0]["implant"]["name"] for i in images]
    assert tops == [DEMO_IMPLANTS[i].name for i in picks]
    assert response.json()["matches"] == images[0]["matches"]


async def test_duplicate_delivery_answers_the_stored_result(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    sid = new_submission_id()
    url = upload_file(uploads_server, sid, "rx.png", reference_png(6))
    parts = jotform_parts(sid, SEED_ANSWERS, {"radiografia": (7, [url])})
    first = await post_jotform(jot, parts)
    before = await count_rows(demo_components)
    second = await post_jotform(jot, parts)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert await count_rows(demo_components) == before
    assert uploads_server.hits(url.removeprefix(uploads_server.origin)) == 1


async def test_racing_deliveries_process_once(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    sid = new_submission_id()
    # served slowly (~0.5 s), so both deliveries are in flight together
    url = upload_file(
        uploads_server, sid, "rx.png", reference_png(21), chunk_size=32768, chunk_delay_s=0.1
    )
    parts = jotform_parts(sid, SEED_ANSWERS, {"radiografia": (7, [url])})
    before = await count_rows(demo_components)
    a, b = await asyncio.gather(post_jotform(jot, parts), post_jotform(jot, parts))
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["submission_id"] == b.json()["submission_id"]
    # the repeat waits for the first delivery and answers its result, not "processing"
    assert a.json()["status"] == b.json()["status"] == "done"
    assert a.json()["matches"] == b.json()["matches"]
    assert await count_rows(demo_components) == (before[0] + 1, before[1] + 1)
    assert uploads_server.hits(url.removeprefix(uploads_server.origin)) == 1
    final = await jot.get(f"/submissions/{a.json()['submission_id']}")
    assert final.json()["status"] == "done"
    assert final.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[21].name


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [(None, 401, "unauthorized"), ("wrong", 401, "unauthorized"), ("", 401, "unauthorized")],
)
async def test_missing_or_wrong_token(
    jot: httpx.AsyncClient, demo_components: Components, token: str | None, status: int, code: str
) -> None:
    before = await count_rows(demo_components)
    parts = jotform_parts(new_submission_id(), SEED_ANSWERS, {})
    response = await post_jotform(jot, parts, token=token)
    assert response.status_code == status and response.json()["error"] == code
    webhook = await jot.post("/webhook", json={"image_base64": "AAAA"}, params={"token": "nope"})
    assert webhook.status_code == 401
    assert await count_rows(demo_components) == before


async def test_webhooks_refused_while_no_token_is_configured(
    demo_components: Components, uploads_server: UploadsServer
) -> None:
    async with intake_client(demo_components, uploads_server, webhook_token=None) as client:
        response = await post_jotform(client, jotform_parts(new_submission_id(), {}, {}))
    assert response.status_code == 503
    assert response.json()["error"] == "webhooks_disabled"
    assert "RAIOX_WEBHOOK_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [('{"q3_nome": "Ana",', "line 1 column 19"), ("[1]", "JSON object")],
)
async def test_malformed_raw_request_is_400(
    jot: httpx.AsyncClient, demo_components: Components, raw: str, detail: str
) -> None:
    before = await count_rows(demo_components)
    response = await post_jotform(jot, jotform_parts(new_submission_id(), {}, {}, rawRequest=raw))
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_payload"
    assert detail in response.json()["detail"]
    assert await count_rows(demo_components) == before


async def test_no_image_and_off_allowlist_urls_are_refused_before_anything_is_kept(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    before = await count_rows(demo_components)
    response = await post_jotform(jot, jotform_parts(new_submission_id(), SEED_ANSWERS, {}))
    assert response.status_code == 422 and response.json()["error"] == "no_image"
    sid = new_submission_id()
    path = f"/uploads/{USERNAME}/{FORM_ID}/{sid}/rx.png"
    uploads_server.serve(path, body=reference_png(1))
    for url in (uploads_server.other_origin + path, "https://evil.example/rx.png"):
        parts = jotform_parts(sid, SEED_ANSWERS, {"radiografia": (7, [url])})
        response = await post_jotform(jot, parts)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "upload_origin_not_allowed"
    assert uploads_server.hits(path) == 0
    assert await count_rows(demo_components) == before


async def test_redirect_off_the_allowlist_is_not_followed(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    sid = new_submission_id()
    target = f"/elsewhere/{sid}.png"
    uploads_server.serve(target, body=reference_png(1))
    start = uploads_server.serve(
        f"/uploads/{sid}/rx.png", status=302, redirect_to=uploads_server.other_origin + target
    )
    response = await post_jotform(jot, jotform_parts(sid, SEED_ANSWERS, {"rx": (7, [start])}))
    assert response.status_code == 422 and response.json()["error"] == "upload_origin_not_allowed"
    assert uploads_server.hits(target) == 0
    row = await stored(demo_components, sid)
    assert row["status"] == "failed" and "allowed origins" in row["error"]
    # a redirect loop ends after three hops
    loop = f"/loop/{sid}"
    uploads_server.serve(loop, status=307, redirect_to=loop)
    sid2 = new_submission_id()
    response = await post_jotform(
        jot, jotform_parts(sid2, SEED_ANSWERS, {"rx": (7, [uploads_server.origin + loop])})
    )
    assert response.status_code == 502 and "redirected more than 3" in response.json()["detail"]
    assert uploads_server.hits(loop) == 4


@pytest.mark.parametrize("declare_length", [True, False])
async def test_download_too_large(
    jot: httpx.AsyncClient,
    demo_components: Components,
    uploads_server: UploadsServer,
    declare_length: bool,
) -> None:
    sid = new_submission_id()
    url = upload_file(
        uploads_server, sid, "huge.png", b"\x89PNG" + b"\0" * 65532, repeat=400,
        declare_length=declare_length,
    )  # fmt: skip
    started = time.perf_counter()
    response = await post_jotform(jot, jotform_parts(sid, SEED_ANSWERS, {"rx": (7, [url])}))
    assert response.status_code == 422 and response.json()["error"] == "download_too_large"
    assert time.perf_counter() - started < 5
    row = await stored(demo_components, sid)
    assert row["status"] == "failed" and "RAIOX_MAX_UPLOAD_BYTES" in row["error"]


async def test_download_too_slow(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    sid = new_submission_id()
    data = reference_png(3)
    url = upload_file(uploads_server, sid, "slow.png", data[:4096], repeat=20, chunk_delay_s=0.25)
    started = time.perf_counter()
    response = await post_jotform(jot, jotform_parts(sid, SEED_ANSWERS, {"rx": (7, [url])}))
    elapsed = time.perf_counter() - started
    assert response.status_code == 422 and response.json()["error"] == "download_timeout"
    assert 1.4 < elapsed < 3.5  # the 1.5 s deadline, not the 5 s the server would take
    assert (await stored(demo_components, sid))["status"] == "failed"


async def test_unreachable_upload_server_keeps_a_failed_submission(
    jot: httpx.AsyncClient, demo_components: Components
) -> None:
    sid = new_submission_id()
    url = f"{UNREACHABLE}/uploads/{USERNAME}/{FORM_ID}/{sid}/rx.png"
    response = await post_jotform(jot, jotform_parts(sid, SEED_ANSWERS, {"rx": (7, [url])}))
    assert response.status_code == 502
    assert response.json()["error"] == "download_failed"
    assert response.headers["retry-after"] == "60"
    assert "127.0.0.1" not in response.json()["detail"]  # no URL in errors
    row = await stored(demo_components, sid)
    assert row["status"] == "failed" and "Could not reach" in row["error"]


async def test_outage_then_redelivery_and_cli_retry_heal(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    first, second = new_submission_id(), new_submission_id()
    urls = {
        sid: upload_file(uploads_server, sid, "rx.png", b"", status=503) for sid in (first, second)
    }
    for sid in (first, second):
        parts = jotform_parts(sid, SEED_ANSWERS, {"rx": (7, [urls[sid]])})
        response = await post_jotform(jot, parts)
        assert response.status_code == 502 and "HTTP 503" in response.json()["detail"]
    for sid, index in ((first, 27), (second, 28)):  # Jotform is back
        upload_file(uploads_server, sid, "rx.png", reference_png(index))
    # a redelivery of a failed submission retries it
    redelivered = await post_jotform(
        jot, jotform_parts(first, SEED_ANSWERS, {"rx": (7, [urls[first]])})
    )
    assert redelivered.status_code == 200, redelivered.text
    assert redelivered.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[27].name
    # `raiox submissions retry` heals the other, from its stored row and payload
    row = await stored(demo_components, second)
    result = await asyncio.to_thread(_cli_retry, demo_components, uploads_server, str(row["id"]))
    assert result.exit_code == 0, result.output
    assert f"{row['id']} done" in result.output
    healed = await jot.get(f"/submissions/{row['id']}")
    assert healed.json()["status"] == "done"
    assert healed.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[28].name
    # nothing left to retry for these two; a second run skips a done submission
    again = await asyncio.to_thread(_cli_retry, demo_components, uploads_server, str(row["id"]))
    assert again.exit_code == 0 and "skipped" in again.output


def _cli_retry(comps: Components, server: UploadsServer, *ids: str) -> Any:
    settings = comps.settings
    env = {
        "RAIOX_DATA_DIR": str(settings.data_dir),
        "RAIOX_MODEL_DIR": str(settings.model_dir),
        "RAIOX_DATABASE_URL": str(settings.database_url),
        "RAIOX_ALLOW_UNTRAINED_MODEL": "1",
        "RAIOX_JOTFORM_UPLOAD_ORIGINS": server.origin,
    }
    return CliRunner().invoke(cli_app, ["submissions", "retry", *ids], env=env)


async def test_generic_webhook_json(
    jot: httpx.AsyncClient, demo_components: Components, uploads_server: UploadsServer
) -> None:
    import base64

    data = reference_png(30)
    body = {"image_base64": "data:image/png;base64," + base64.b64encode(data).decode(),
            "dente": "24", "email": "x@example.com"}  # fmt: skip
    headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "form-tool-42"}
    first = await jot.post("/webhook", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[30].name
    before = await count_rows(demo_components)
    repeat = await jot.post("/webhook", json=body, headers=headers)
    assert repeat.json()["submission_id"] == first.json()["submission_id"]
    assert await count_rows(demo_components) == before
    url = uploads_server.serve("/hook/rx31.png", body=reference_png(31))
    by_url = await jot.post("/webhook", json={"image_url": url}, params={"token": TOKEN})
    assert by_url.status_code == 200
    assert by_url.json()["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[31].name
    bad = [
        ({"image_url": "https://evil.example/x.png"}, 422, "upload_origin_not_allowed"),
        ({"image_base64": "not base64!"}, 400, "invalid_webhook"),
        ({"dente": "11"}, 422, "no_image"),
        ({"image_base64": base64.b64encode(b"not an image").decode()}, 415, None),
    ]
    for payload, status, code in bad:
        response = await jot.post("/webhook", json=payload, params={"token": TOKEN})
        assert response.status_code == status, (payload, response.text)
        assert code is None or response.json()["error"] == code


async def test_submission_confirmed_with_jotform_api(
    demo_components: Components, uploads_server: UploadsServer
) -> None:
    known, forged = new_submission_id(), new_submission_id()
    uploads_server.serve(
        f"/api/submission/{known}",
        content_type="application/json",
        body=json.dumps(
            {"responseCode": 200, "content": {"id": known, "form_id": FORM_ID}}
        ).encode(),
    )
    uploads_server.serve(
        f"/api/submission/{forged}",
        status=404,
        content_type="application/json",
        body=b'{"responseCode": 404, "message": "Submission not found"}',
    )
    urls = {
        sid: upload_file(uploads_server, sid, "rx.png", reference_png(8)) for sid in (known, forged)
    }
    async with intake_client(
        demo_components,
        uploads_server,
        verify_submissions=True,
        api_url=uploads_server.origin + "/api",
    ) as client:
        ok = await post_jotform(
            client, jotform_parts(known, SEED_ANSWERS, {"rx": (7, [urls[known]])})
        )
        bad = await post_jotform(
            client, jotform_parts(forged, SEED_ANSWERS, {"rx": (7, [urls[forged]])})
        )
    assert ok.status_code == 200, ok.text
    api_call = uploads_server.requests_to(f"/api/submission/{known}")[0]
    assert api_call.headers.get("APIKEY") == API_KEY and API_KEY not in api_call.path
    assert bad.status_code == 403 and bad.json()["error"] == "submission_not_confirmed"
    assert uploads_server.hits(urls[forged].removeprefix(uploads_server.origin)) == 0
    assert (await stored(demo_components, forged))["status"] == "failed"
    # Jotform's API down: kept as failed and retryable, nothing fetched meanwhile
    later = new_submission_id()
    url = upload_file(uploads_server, later, "rx.png", reference_png(8))
    async with intake_client(
        demo_components,
        uploads_server,
        verify_submissions=True,
        api_url=UNREACHABLE,
    ) as client:
        down = await post_jotform(client, jotform_parts(later, SEED_ANSWERS, {"rx": (7, [url])}))
    assert down.status_code == 502 and down.json()["error"] == "jotform_unreachable"
    assert uploads_server.hits(url.removeprefix(uploads_server.origin)) == 0
    assert (await stored(demo_components, later))["status"] == "failed"
