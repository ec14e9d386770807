"""The console and the feedback loop driven end to end in a real headless Chromium (Debian's
chromium + chromium-driver through Selenium) against the real app served by uvicorn.

uvicorn runs on the test's event loop (where the database pool lives); the browser, whose
calls block, is driven from a worker thread, which reaches the database through that loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from appliance.app import create_app
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample, render_reference
from appliance.components import Components
from tests.fixtures.admin import ADMIN, PASSWORD, STAFF, admin_components

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are not installed",
)
T = TypeVar("T")


@dataclass
class Site:
    base: str
    comps: Components
    loop: asyncio.AbstractEventLoop
    files: Path

    def db(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a database call on the server's loop from the browser's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def url(self, path_or_url: str) -> str:
        return path_or_url if path_or_url.startswith("http") else self.base + path_or_url

    def upload(self, data: bytes) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base}/upload",
            files={"file": ("rx.png", data, "image/png")},
            data={"dente": "46", "paciente": "Maria Souza"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def site(pg_server: Any, model_dir: Path, tmp_path_factory: Any) -> AsyncIterator[Site]:
    comps = await admin_components(pg_server, model_dir)
    port = _free_port()
    config = uvicorn.Config(
        create_app(comps.settings, comps), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.05)
    yield Site(
        f"http://127.0.0.1:{port}",
        comps,
        asyncio.get_running_loop(),
        tmp_path_factory.mktemp("admin-browser"),
    )
    server.should_exit = True
    await task
    await comps.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="raiox-chromium-") as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=412,915",  # a phone
            f"--user-data-dir={profile}",
        ):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        driver.set_page_load_timeout(120)
        driver.implicitly_wait(20)  # a form post's next page may still be loading
        try:
            yield driver
        finally:
            driver.quit()


async def in_browser(job: Callable[[], None]) -> None:
    await asyncio.to_thread(job)


def _css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def _all(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _sign_in(driver: Any, site: Site, username: str, password: str = PASSWORD) -> None:
    driver.get(f"{site.base}/admin/login")
    _css(driver, "#username").send_keys(username)
    _css(driver, "#password").send_keys(password)
    _css(driver, "#sign-in").click()
    # wait for the post's answer (signed in, or refused): navigating at once races it
    _css(driver, "#signed-in-as, #login-error")


def _accuracy(driver: Any, site: Site) -> tuple[str, str]:
    driver.get(f"{site.base}/admin/")
    assert _all(driver, "#accuracy-n"), driver.page_source[:1500]
    return _css(driver, "#accuracy-n").text, _css(driver, "#accuracy-top1").text


async def test_admin_feedback_loop_in_chromium(site: Site, browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    driver = browser
    outsider = DEMO_IMPLANTS[20]  # not in the 8 implants the fixture loads
    reference = site.files / "reference.png"
    reference.write_bytes(png_bytes(render_reference(outsider, 1)))
    known = DEMO_IMPLANTS[5]
    sample = png_bytes(render_patient_sample(known, seed=21))
    erased: dict[str, Any] = {}

    def scenario() -> None:
        driver.get(f"{site.base}/admin/")
        assert driver.current_url.endswith("/admin/login")
        _sign_in(driver, site, ADMIN, "not the password")
        assert "incorretos" in _css(driver, "#login-error").text
        _sign_in(driver, site, ADMIN)
        assert _css(driver, "#signed-in-as").text.startswith(ADMIN)
        assert _accuracy(driver, site) == ("0", "—")

        # create an implant and give it a reference image
        driver.get(f"{site.base}/admin/implants")
        _css(driver, "#new-implant").click()
        _css(driver, "#name").send_keys("Implante Novo 4.1")
        _css(driver, "#manufacturer").send_keys("Fabricante Teste")
        _css(driver, "#diameter_mm").send_keys("4,1")
        _css(driver, "#save-implant").click()
        _css(driver, "#references")  # the new implant's page has loaded
        implant_id = int(driver.current_url.rsplit("/", 1)[-1])
        _css(driver, "#reference-file").send_keys(str(reference))
        _css(driver, "#add-reference").click()
        assert len(_all(driver, "figure[data-reference]")) == 1

        # identify an image of it through /upload: ranked first on the result page
        body = site.upload(reference.read_bytes())
        erased.update(body)
        driver.get(site.url(body["result_url"]))
        first = _css(driver, 'li.match[data-rank="1"]')
        assert first.find_element("css selector", ".name").text == "Implante Novo 4.1"
        first.find_element("css selector", ".confirm-match").click()  # "é este"
        assert _css(driver, "p.confirmed").get_attribute("data-implant") == str(implant_id)
        assert _accuracy(driver, site) == ("1", "100.0%")

        # a radiograph of a catalog implant: the dentist picks the right one ("nenhum destes")
        body = site.upload(sample)
        driver.get(site.url(body["result_url"]))
        known_id = site.db(
            site.comps.database.pool.fetchval("SELECT id FROM implants WHERE name = $1", known.name)
        )
        Select(_css(driver, "select.pick-implant")).select_by_value(str(known_id))
        _css(driver, ".confirm-other").click()
        assert _css(driver, "p.confirmed").get_attribute("data-implant") == str(known_id)
        proposed_first = body["matches"][0]["implant"]["id"] == known_id
        assert _accuracy(driver, site)[0] == "2"

        # staff promote it in the console; the same radiograph then ranks it first
        driver.get(f"{site.base}/admin/submissions/{body['submission_id']}")
        assert _css(driver, "p.label").get_attribute("data-implant") == str(known_id)
        _css(driver, "button.promote").click()
        assert _all(driver, "p.promoted"), driver.page_source[-3000:]
        again = site.upload(sample)
        assert again["matches"][0]["implant"]["id"] == known_id
        driver.get(site.url(again["result_url"]))
        _css(driver, 'li.match[data-rank="1"] .confirm-match').click()
        # wait for the confirmation's page: navigating away first races the form's post
        assert _css(driver, "p.confirmed").get_attribute("data-implant") == str(known_id)
        n, top1 = _accuracy(driver, site)
        assert n == "3" and top1 == ("100.0%" if proposed_first else "66.7%")

        # erase the first submission: rows and files go
        erased["key"] = site.db(
            site.comps.database.pool.fetchval(
                "SELECT storage_key FROM submission_images WHERE submission_id = $1",
                uuid.UUID(erased["submission_id"]),
            )
        )
        assert site.comps.store.path(erased["key"]).exists()
        driver.get(f"{site.base}/admin/submissions/{erased['submission_id']}")
        _css(driver, "#erase-confirm").send_keys("apagar")
        _css(driver, "#erase").click()
        assert _css(driver, "#erased")

        # a form whose CSRF token was taken out is refused
        driver.get(f"{site.base}/admin/implants/{implant_id}")
        driver.execute_script(
            "document.querySelector('#implant-form input[name=csrf_token]').remove()"
        )
        _css(driver, "#notes").send_keys("sem token")
        _css(driver, "#save-implant").click()
        assert _all(driver, "#error"), driver.page_source[:3000]
        assert _css(driver, "#error").get_attribute("data-error") == "csrf_failed"

        # an expired session leads back to sign-in, and nothing is changed
        site.db(
            site.comps.database.pool.execute(
                "UPDATE admin_sessions SET expires_at = now() - interval '1 minute'"
            )
        )
        driver.get(f"{site.base}/admin/implants/{implant_id}")
        assert driver.current_url.endswith("/admin/login")

        # staff may not read the audit log nor erase
        _sign_in(driver, site, STAFF)
        driver.get(f"{site.base}/admin/audit")
        assert _css(driver, "#error").get_attribute("data-error") == "admin_only"
        driver.get(f"{site.base}/admin/submissions/{body['submission_id']}")
        assert not _all(driver, "#erase")

        _css(driver, "#sign-out").click()
        _css(driver, "#sign-in")  # the sign-in page has loaded
        driver.get(f"{site.base}/admin/")
        assert driver.current_url.endswith("/admin/login")

    await in_browser(scenario)
    pool = site.comps.database.pool
    assert await pool.fetchval("SELECT count(*) FROM submissions WHERE tooth = '46'") == 2
    gone = uuid.UUID(erased["submission_id"])
    for table, column in (("submissions", "id"), ("submission_images", "submission_id")):
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", gone) == 0
    key = erased["key"]
    assert not site.comps.store.path(key).exists()
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE storage_key = $1", key) == 0
    notes = await pool.fetchval("SELECT notes FROM implants WHERE name = 'Implante Novo 4.1'")
    assert notes is None  # the CSRF-less edit changed nothing
    actions = [r["action"] for r in await pool.fetch("SELECT action FROM audit_log ORDER BY id")]
    for action in (
        "implant.create",
        "reference.add",
        "label.confirm",
        "label.promote",
        "submission.erase",
        "session.sign_out",
    ):
        assert action in actions
