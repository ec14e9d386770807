"""The dentist's results page: served over real HTTP by uvicorn (on the test loop, where the shared
database pool lives) and rendered by a real headless Chromium (Debian's chromium)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from appliance.app import create_app
from appliance.catalog.demo import DEMO_IMPLANTS
from appliance.components import Components
from appliance.submissions import Submitter
from tests.fixtures.appliance import variant
from tests.fixtures.uploads_server import UploadsServer
from tests.test_intake import (
    SEED_ANSWERS,
    TOKEN,
    intake_changes,
    jotform_parts,
    new_submission_id,
    reference_png,
    upload_file,
)

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not __import__("os").path.exists(CHROMIUM), reason="Debian's chromium is not installed"
)


@dataclass
class Served:
    base: str
    http: httpx.AsyncClient
    access_log: list[str]
    comps: Components


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def served(
    demo_components: Components, uploads_server: UploadsServer
) -> AsyncIterator[Served]:
    async with variant(demo_components, **intake_changes(uploads_server)) as comps:
        async for served in _serve(comps):
            yield served


async def _serve(comps: Components) -> AsyncIterator[Served]:
    port = free_port()
    config = uvicorn.Config(
        create_app(comps.settings, comps), host="127.0.0.1", port=port, log_level="info"
    )
    server = uvicorn.Server(config)
    lines: list[str] = []
    collector = _Collect(lines)
    logging.getLogger("uvicorn.access").addHandler(collector)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        yield Served(base, http, lines, comps)
    server.should_exit = True
    await task
    logging.getLogger("uvicorn.access").removeHandler(collector)


async def chromium_dom(url: str) -> str:
    with tempfile.TemporaryDirectory(prefix="raiox-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def submit(
    served: Served, server: UploadsServer, index: int
) -> tuple[str, dict[str, object]]:
    sid = new_submission_id()
    url = upload_file(server, sid, "rx.png", reference_png(index))
    parts = jotform_parts(sid, SEED_ANSWERS, {"radiografia": (7, [url])})
    response = await served.http.post("/jotform", params={"token": TOKEN}, files=parts)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return sid, body


def match_names(dom: str) -> list[str]:
    return re.findall(r'<span class="name">([^<]+?)(?: <span|</span>)', dom)


async def test_chromium_renders_the_three_implants(
    served: Served, uploads_server: UploadsServer
) -> None:
    _, body = await submit(served, uploads_server, 14)
    token = str(body["result_url"]).rsplit("/", 1)[-1]
    served.access_log.clear()
    dom = await chromium_dom(f"{served.base}/results/{token}")
    assert dom.count('class="match"') == 3
    expected = [m["implant"]["name"] for m in body["matches"]]  # type: ignore[attr-defined]
    assert match_names(dom) == expected and expected[0] == DEMO_IMPLANTS[14].name
    assert 'id="untrained-model"' in dom and "NÃO treinado" in dom
    assert 'id="synthetic-catalog"' in dom
    assert re.search(r'id="tooth">36<', dom)
    assert "similaridade" in dom and 'http-equiv="refresh"' not in dom
    # only the tooth: neither the patient's nor the dentist's name is on the page
    for private in ("João", "Silva", "Ana", "Souza", "example.com"):
        assert private not in dom
    # the browser fetched the radiograph and the three reference images, all 200, and the
    # access log never saw the token
    log = "\n".join(served.access_log)
    assert re.search(r'"GET /results/\[redacted\]/images/0 HTTP/1\.1" 200', log), log
    assert len(re.findall(r'"GET /references/\d+/image HTTP/1\.1" 200', log)) == 3, log
    assert token not in log


async def test_chromium_waits_on_a_processing_submission(served: Served) -> None:
    submission, _ = await served.comps.submissions.create(
        source="jotform",
        external_id=new_submission_id(),
        submitter=Submitter(tooth="21"),
        client_id=None,
        image_urls=[None],
    )
    dom = await chromium_dom(f"{served.base}/results/{submission.result_token}")
    assert 'id="processing"' in dom
    assert re.search(r'<meta http-equiv="refresh" content="2">', dom)
    assert 'class="match"' not in dom


async def test_thank_you_redirect_waits_then_lands_on_the_result(
    served: Served, uploads_server: UploadsServer
) -> None:
    pending = new_submission_id()
    dom = await chromium_dom(f"{served.base}/results/jotform/{pending}")
    assert 'id="waiting"' in dom and 'content="2; url=?n=1"' in dom
    sid, body = await submit(served, uploads_server, 19)
    dom = await chromium_dom(f"{served.base}/results/jotform/{sid}")
    assert match_names(dom)[0] == DEMO_IMPLANTS[19].name
    assert match_names(dom) == [m["implant"]["name"] for m in body["matches"]]  # type: ignore[attr-defined]


async def test_private_headers_json_variant_and_image(
    served: Served, uploads_server: UploadsServer
) -> None:
    _, body = await submit(served, uploads_server, 5)
    page_url = str(body["result_url"])
    token = page_url.rsplit("/", 1)[-1]
    page = await served.http.get(page_url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, value in {
        "cache-control": "no-store",
        "x-robots-tag": "noindex, nofollow, noarchive",
        "referrer-policy": "no-referrer",
    }.items():
        assert page.headers[name] == value
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none'
    stored = (await served.http.get(f"/submissions/{body['submission_id']}")).json()
    as_json = await served.http.get(f"/results/{token}.json")
    negotiated = await served.http.get(page_url, headers={"Accept": "application/json"})
    assert (
        as_json.json()
        == negotiated.json()
        == {**stored, "result_url": as_json.json()["result_url"]}
    )
    assert as_json.headers["cache-control"] == "no-store"
    image = await served.http.get(f"/results/{token}/images/0")
    assert image.content == reference_png(5) and image.headers["content-type"] == "image/png"
    assert image.headers["x-robots-tag"].startswith("noindex")
    for missing in (f"/results/{token[:-2]}xx", "/results/short", f"/results/{token}/images/1"):
        response = await served.http.get(missing)
        assert response.status_code == 404, missing
    assert (await served.http.get("/results/nope-nope-nope-nope-nope.json")).json()["error"] == (
        "result_not_found"
    )


async def test_thank_you_link_expires_and_stops_waiting(
    served: Served, uploads_server: UploadsServer
) -> None:
    sid, _ = await submit(served, uploads_server, 7)
    landing = await served.http.get(f"/results/jotform/{sid}")
    assert landing.status_code == 303 and landing.headers["location"].startswith("/results/")
    await served.comps.database.pool.execute(
        "UPDATE submissions SET created_at = now() - interval '31 minutes' "
        "WHERE source = 'jotform' AND external_id = $1",
        sid,
    )
    expired = await served.http.get(f"/results/jotform/{sid}")
    assert expired.status_code == 410 and "expirou" in expired.text
    gave_up = await served.http.get(f"/results/jotform/{new_submission_id()}", params={"n": 90})
    assert gave_up.status_code == 404 and 'id="not-received"' in gave_up.text
    assert 'http-equiv="refresh"' not in gave_up.text
    assert (await served.http.get("/results/jotform/..%2Fx")).status_code == 404
