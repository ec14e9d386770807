"""Request ids, request metrics by route template and JSON log lines, in process (the
multi-worker, real-Prometheus version is test_metrics_live.py)."""

from __future__ import annotations

import json
import logging
import uuid

import httpx
import pytest

from appliance import metrics
from appliance.logs import REQUEST_ID, JsonFormatter


def requests_counted(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return float(metrics.REGISTRY.get_sample_value("raiox_http_requests_total", labels) or 0)


async def test_request_id_is_returned_and_a_valid_incoming_one_kept(
    client: httpx.AsyncClient,
) -> None:
    fresh = await client.get("/implants")
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert fresh.headers["X-Request-ID"] != (await client.get("/implants")).headers["X-Request-ID"]
    kept = await client.get("/implants", headers={"X-Request-ID": "proxy-abc-123.4"})
    assert kept.headers["X-Request-ID"] == "proxy-abc-123.4"
    for bad in ("short", "x" * 129, "has space in it", 'quote"injection"x'):
        response = await client.get("/implants", headers={"X-Request-ID": bad})
        assert response.headers["X-Request-ID"] != bad
        assert len(response.headers["X-Request-ID"]) == 32


async def test_requests_are_counted_by_route_template_not_path(
    client: httpx.AsyncClient,
) -> None:
    template = "/submissions/{submission_id}"
    before = requests_counted(template, "GET", "404")
    unmatched = requests_counted("unmatched", "GET", "404")
    for _ in range(3):
        missing = await client.get(f"/submissions/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert "X-Request-ID" in missing.headers
    assert requests_counted(template, "GET", "404") == before + 3
    nowhere = await client.get("/no/such/route/8f3a")
    assert nowhere.status_code == 404 and "X-Request-ID" in nowhere.headers
    assert requests_counted("unmatched", "GET", "404") == unmatched + 1
    exposition = (await client.get("/metrics")).text
    assert "/no/such/route" not in exposition  # paths never become label values
    assert 'raiox_http_request_duration_seconds_bucket{le="0.005",method="GET"' in exposition


async def test_each_request_logs_one_json_line_with_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="appliance.requests"):
        await client.get("/implants", headers={"X-Request-ID": "trace-0000-feed"})
    (record,) = [r for r in caplog.records if r.name == "appliance.requests"]
    token = REQUEST_ID.set("trace-0000-feed")  # as it was while the request ran
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert entry["request_id"] == "trace-0000-feed"
    assert (entry["method"], entry["route"], entry["status"]) == ("GET", "/implants", 200)
    assert entry["level"] == "info" and isinstance(entry["duration_ms"], float)


def test_json_lines_mask_credentials_that_reach_a_message() -> None:
    logger = logging.getLogger("test.redaction")
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1,
        "download failed for %s via %s", ("https://x.example/f?apiKey=abc123&n=2",
        "postgresql://raiox:hunter2@db:5432/raiox"), None,
    )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert "abc123" not in line and "hunter2" not in line
    assert "apiKey=[redacted]&n=2" in entry["msg"] and "raiox:[redacted]@db" in entry["msg"]
