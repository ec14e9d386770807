"""A flood of half-open connections (headers never finished) against `raiox serve` run
directly, at a low file-descriptor ceiling: the appliance keeps answering and its log stays
small. Bounded: ~3,000 sockets on loopback, every one closed at the end."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.live_server import live_server

SERVER_FD_LIMIT = 1024
FLOOD = 3000


@pytest.fixture
def served(database_url: str, model_dir: Path) -> Iterator[tuple[int, Path]]:
    """`raiox serve` in its own process, held to SERVER_FD_LIMIT descriptors (soft and hard)."""

    def low_ceiling() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FD_LIMIT, SERVER_FD_LIMIT))

    with live_server(database_url, model_dir, preexec_fn=low_ceiling) as server:
        yield server.port, server.log_path


def open_half_open(port: int, count: int, budget_s: float) -> list[socket.socket]:
    """Connect and send an unfinished request head; stop at `count` or after `budget_s`."""
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + budget_s
    while len(sockets) < count and time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
            s.send(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            s.close()
            continue
        sockets.append(s)
    return sockets


def test_half_open_flood_leaves_the_server_answering_with_a_small_log(
    served: tuple[int, Path],
) -> None:
    port, log_path = served
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 256 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    flood = min(FLOOD, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)
    assert flood > 2 * SERVER_FD_LIMIT, "this test needs more descriptors than the server has"
    log_before = log_path.stat().st_size

    sockets = open_half_open(port, flood, budget_s=30)
    try:
        time.sleep(1)  # let the server take in the tail of the flood
        started = time.monotonic()
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1.0)
        except httpx.TransportError as exc:
            pytest.fail(f"/healthcheck did not answer within 1 s during the flood: {exc!r}")
        assert answer.status_code in (200, 503)
        assert time.monotonic() - started < 1.0
    finally:
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()

    time.sleep(1)
    grown = log_path.read_bytes()[log_before:]
    assert len(grown) < 20_000, f"log grew {len(grown)} bytes: {grown[-2000:]!r}"
