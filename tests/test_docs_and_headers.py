"""Security headers on every response (errors and 404s too), and /docs served entirely from
the appliance: a real Chromium renders the API's operations with no network."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.fixtures.live_server import live_server


def assert_security_headers(answer: httpx.Response) -> None:
    h = answer.headers
    assert h["X-Content-Type-Options"] == "nosniff", answer.request.url
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthcheck"),
        ("GET", "/implants"),
        ("GET", "/implants/999999999"),
        ("GET", "/no/such/route"),
        ("POST", "/implants"),
        ("GET", "/docs"),
        ("GET", "/docs/openapi.json"),
        ("GET", "/results/not-a-token"),
        ("POST", "/upload"),
    ],
)
async def test_every_response_carries_security_headers(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    answer = await client.request(method, path)
    assert_security_headers(answer)
    if answer.headers["Content-Type"].startswith("text/html"):
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'unsafe-inline'" not in csp and "http" not in csp


async def test_docs_use_only_the_appliance_own_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    for asset in assets:
        answer = await client.get(asset)
        assert answer.status_code == 200, asset
        assert_security_headers(answer)


def test_chromium_renders_the_docs_offline(database_url: str, model_dir: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "make test installs Debian's chromium"
    profile = tempfile.mkdtemp(prefix="raiox-test-chromium-", dir="/tmp")
    try:
        with live_server(database_url, model_dir) as server:
            dom = subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    f"--user-data-dir={profile}",
                    # Offline: any request off the appliance fails, like a clinic LAN's.
                    "--proxy-server=http://127.0.0.1:9",
                    "--proxy-bypass-list=127.0.0.1",
                    "--virtual-time-budget=15000",
                    "--dump-dom",
                    f"{server.url}/docs",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert 'data-path="/upload"' in dom, dom[-2000:]
    assert 'data-path="/implants/{implant_id}"' in dom
