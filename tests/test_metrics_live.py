"""The real thing, end to end: `raiox serve --workers 2` and `raiox sync` as processes (real
Postgres, Redis and S3), a real Prometheus scraping both on loopback with the stack's rules
loaded; after a known number of identifications, PromQL over Prometheus's HTTP API returns
exactly those counts. The same run checks the logs: JSON, one object a line, request ids, and
none of the personal data or secrets the requests carried."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.prometheus import (
    DASHBOARDS,
    MONITORING,
    PrometheusServer,
    load_dashboard,
    metric_names,
    panel_expressions,
)
from tests.fixtures.redis import RedisServer, free_port
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY, S3Server
from tests.test_batching import distinct_images
from tests.test_monitoring import declared_metrics, exporter_metrics, rules

WEBHOOK_TOKEN = "whk-7c1e5a0d9b3f4e21a8d6"
# Sent with the uploads; none may appear in any log line.
PERSONAL = {
    "nome": "Dra. Heloisa Quaresma Vilaça",
    "email": "heloisa.quaresma@clinica-exemplo.com.br",
    "paciente": "Joaquim Barbalho Nogueira",
}
UPLOADS = 5


class Processes:
    """Child processes of the test, each logging to its own file, all stopped at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "appliance", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in reversed(self.running):
            if process.poll() is None:
                os.killpg(process.pid, 15)  # the server's own workers are in its group
        for process in self.running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(10)


def wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, httpx.HTTPError, KeyError, IndexError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def scrape_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture(scope="module")
def stack(
    pg_server: Any,
    model_dir: Path,
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The running stack, after the known identifications (`requests`: request id -> status)."""
    tmp_path = tmp_path_factory.mktemp("metrics-live")
    pg_server.psql("CREATE DATABASE raiox_metrics_live;")
    s3_server.ensure_running()
    redis_server.ensure_running()
    api_port, sync_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAIOX_DATA_DIR": str(tmp_path / "data"),
        "RAIOX_MODEL_DIR": str(model_dir),
        "RAIOX_ALLOW_UNTRAINED_MODEL": "1",
        "RAIOX_DATABASE_URL": str(pg_server.get_uri(database="raiox_metrics_live")),
        "RAIOX_REDIS_URL": redis_server.url,
        "RAIOX_SPACES_ENDPOINT": s3_server.endpoint,
        "RAIOX_SPACES_REGION": "us-east-1",
        "RAIOX_SPACES_BUCKET": s3_server.new_bucket(),
        "RAIOX_SPACES_ACCESS_KEY": ACCESS_KEY,
        "RAIOX_SPACES_SECRET_KEY": SECRET_KEY,
        "RAIOX_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "RAIOX_OPEN_ACCESS": "1",
        "RAIOX_HOST": "127.0.0.1",
        "RAIOX_SYNC_POLL_SECONDS": "0.5",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_999999.db").write_bytes(b"stale")  # emptied at start
    subprocess.run(
        [sys.executable, "-m", "appliance", "catalog", "demo", "--views", "1"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    procs = Processes(tmp_path)
    prometheus = PrometheusServer(
        free_port(), {"api": f"127.0.0.1:{api_port}", "sync": f"127.0.0.1:{sync_port}"}
    )
    try:
        procs.start("api", ["serve", "--port", str(api_port), "--workers", "2"], env)
        sync_env = {**env, "RAIOX_SYNC_METRICS_PORT": str(sync_port)}
        sync_env.pop("PROMETHEUS_MULTIPROC_DIR")
        procs.start("sync", ["sync"], sync_env)
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: httpx.get(f"{api}/healthcheck").status_code == 200, "the api", 120)
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{sync_port}/metrics"), "sync")
        prometheus.start()
        requests = identify_known_number(api)
        yield {
            "requests": requests,
            "api": api,
            "sync": f"http://127.0.0.1:{sync_port}",
            "prometheus": prometheus,
            "procs": procs,
            "metrics_dir": tmp_path / "metrics",
        }
    finally:
        prometheus.stop()
        procs.stop()


def identify_known_number(api: str) -> dict[str, str]:
    """UPLOADS good uploads, one refused upload, one webhook; returns request id -> status."""
    seen = {}
    with httpx.Client(base_url=api, timeout=60) as client:
        for n, image in enumerate(distinct_images(UPLOADS, 500)):
            files = {"file": (f"rx-{n}.png", image, "image/png")}
            headers = {"X-Request-ID": f"test-upload-{n:04d}"}
            response = client.post("/upload", files=files, data=PERSONAL, headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["X-Request-ID"] == f"test-upload-{n:04d}"
            seen[response.headers["X-Request-ID"]] = "200"
        bad = client.post(
            "/upload",
            files={"file": ("x.png", b"not an image at all", "image/png")},
            data=PERSONAL,
            headers={"X-Request-ID": "bad id\twith spaces"},  # not valid: replaced
        )
        assert 400 <= bad.status_code < 500
        assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["X-Request-ID"])
        seen[bad.headers["X-Request-ID"]] = str(bad.status_code)
        hook = client.post(
            "/webhook",
            params={"token": WEBHOOK_TOKEN},
            json={
                "image_base64": base64.b64encode(distinct_images(1, 900)[0]).decode(),
                **PERSONAL,
            },
        )
        assert hook.status_code == 200, hook.text
        seen[hook.headers["X-Request-ID"]] = "200"
    return seen


def test_prometheus_counts_what_was_identified(stack: dict[str, Any]) -> None:
    prometheus: PrometheusServer = stack["prometheus"]

    def counts() -> dict[tuple[str, str], float] | None:
        result = prometheus.query("sum by (source, outcome) (raiox_identifications_total)")
        found = {
            (r["metric"]["source"], r["metric"]["outcome"]): float(r["value"][1]) for r in result
        }
        nonzero = {k: v for k, v in found.items() if v}
        expected = {("upload", "ok"): UPLOADS, ("upload", "invalid"): 1, ("webhook", "ok"): 1}
        return found if nonzero == expected else None

    try:
        wait_for(counts, "Prometheus to count the identifications", 60)
    except AssertionError as exc:
        found = prometheus.query("sum by (source, outcome) (raiox_identifications_total)")
        targets = prometheus.api("targets")["activeTargets"]
        health = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
        tails = {name: stack["procs"].log(name)[-3000:] for name in ("api", "sync")}
        raise AssertionError(f"{exc}\nfound {found}\ntargets {health}\nlogs {tails}") from None
    uploads_ok = prometheus.query(
        'sum(raiox_http_requests_total{route="/upload", method="POST", status="200"})'
    )
    assert float(uploads_ok[0]["value"][1]) == UPLOADS
    # every image (the catalog's references, then the identified ones) reached Spaces, and
    # the worker's metrics say so
    references = float(prometheus.query("raiox_catalog_reference_images")[0]["value"][1])
    assert references == 32  # the demo catalog, one view per implant

    def replicated() -> bool:
        uploads = prometheus.query("raiox_replication_uploads_total")[0]["value"][1]
        backlog = prometheus.query("raiox_replication_backlog_items")[0]["value"][1]
        return float(uploads) == references + UPLOADS + 1 and float(backlog) == 0

    wait_for(replicated, "replication to show in Prometheus", 60)
    stages = prometheus.query("sum by (stage) (raiox_stage_duration_seconds_count)")
    per_stage = {r["metric"]["stage"]: float(r["value"][1]) for r in stages}
    for stage in ("cache", "decode", "preprocess", "queue", "encode", "search", "store"):
        assert per_stage.get(stage, 0) >= UPLOADS, (stage, per_stage)
    model = prometheus.query("raiox_model_info")
    assert {r["metric"]["pretrained"] for r in model} == {"false"}
    # the stack's rules load in a real Prometheus, and the untrained-model alert is pending
    loaded = prometheus.api("rules")["groups"]
    assert {g["name"] for g in loaded} >= {"raiox-recording", "raiox-availability"}
    wait_for(
        lambda: any(
            a["labels"]["alertname"] == "RaioxUntrainedModel"
            for a in prometheus.api("alerts")["alerts"]
        ),
        "the untrained-model alert",
        30,
    )

    # Two workers wrote their own files, and a scrape (whichever worker answers) merges them:
    # each worker's pool of at most 10 connections shows up in the sum, and so do all uploads,
    # whichever worker took them.
    pids = {p.stem.rsplit("_", 1)[-1] for p in stack["metrics_dir"].glob("counter_*.db")}
    assert len(pids) >= 2 and "999999" not in pids
    for _ in range(6):
        text = httpx.get(f"{stack['api']}/metrics", headers={"Connection": "close"}).text
        line = re.search(r'raiox_identifications_total\{outcome="ok",source="upload"\} (\S+)', text)
        assert line and float(line.group(1)) == UPLOADS
        pool = re.search(r"^raiox_db_pool_max_connections (\S+)$", text, re.M)
        assert pool and float(pool.group(1)) == 2 * 10

    check_logs(stack["procs"], stack["requests"])


def check_logs(procs: Processes, requests: dict[str, str]) -> None:
    log = procs.log("api") + procs.log("sync")
    lines = [line for line in log.splitlines() if line.strip()]
    entries = []
    for line in lines:
        entries.append(json.loads(line))  # every line is one JSON object
    by_request = {e["request_id"]: e for e in entries if e.get("logger") == "appliance.requests"}
    for request_id, status in requests.items():
        assert str(by_request[request_id]["status"]) == status
    assert {e["route"] for e in by_request.values()} >= {"/upload", "/webhook"}
    secrets = [*PERSONAL.values(), WEBHOOK_TOKEN, SECRET_KEY, ACCESS_KEY]
    secrets += [PERSONAL["email"].split("@")[0], "Quaresma", "Barbalho"]
    for secret in secrets:
        assert secret not in log, f"{secret!r} leaked into the logs"


def test_dashboards_and_rules_query_only_live_metrics(stack: dict[str, Any]) -> None:
    """Every metric a panel or rule uses is exported by a running api or sync worker (or is an
    exporter's or a recording rule's), and everything METRICS.md promises is exported."""
    live = scrape_names(f"{stack['api']}/metrics") | scrape_names(f"{stack['sync']}/metrics")
    for name, kind in declared_metrics().items():
        wanted = f"{name}_bucket" if kind == "histogram" else name
        assert wanted in live, f"METRICS.md promises {name}, nobody exports it"
    known = live | exporter_metrics() | {r["record"] for r in rules() if "record" in r}
    for path in DASHBOARDS:
        for title, expr in panel_expressions(load_dashboard(path)):
            missing = metric_names(expr) - known
            assert not missing, f"{path.stem}: panel {title!r} queries {missing}: nobody exports"
    for rule in rules():
        assert not metric_names(rule["expr"]) - known, rule
    assert (MONITORING / "prometheus" / "prometheus.yml").is_file()
