"""The embedded Postgres stops with the last appliance process that uses it, whatever happened
before: real `raiox serve` / `raiox demo` processes, real signals, the real pgserver."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """Every `postgres -D <pgdata>` postmaster still running."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline:
            found.append(proc)
    return found


def wait_gone(pgdata: Path, seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := postgres_processes(pgdata)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="raiox-test-life-", dir="/tmp"))
    yield root
    for proc in postgres_processes((root / "postgres").resolve()):  # only ours, by data dir
        proc.terminate()
        proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


def appliance_env(data_dir: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_")}
    env.update(
        RAIOX_DATA_DIR=str(data_dir),
        RAIOX_MODEL_DIR=str(model_dir),
        RAIOX_ALLOW_UNTRAINED_MODEL="1",
        RAIOX_OPEN_ACCESS="1",
    )
    return env


def start_serve(
    data_dir: Path,
    model_dir: Path,
    port: int,
    *,
    workers: int = 1,
    drain_seconds: float = 0,
    tmp_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    env = appliance_env(data_dir, model_dir)
    env["RAIOX_DRAIN_SECONDS"] = str(drain_seconds)
    if tmp_dir is not None:
        env["TMPDIR"] = str(tmp_dir)
    command = [sys.executable, "-m", "appliance", "serve", "--port", str(port)]
    with open(data_dir / f"serve-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=env,
            cwd=data_dir,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data_dir / f"serve-{port}.log").read_text()
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("raiox serve did not answer within 120 s")


def test_sigterm_after_a_sigkilled_server_stops_the_embedded_postgres(
    data_dir: Path, model_dir: Path
) -> None:
    pgdata = (data_dir / "postgres").resolve()
    tmp_dir = data_dir / "tmp"  # where the killed server's temporary folder is left, and removed
    tmp_dir.mkdir()
    first = start_serve(data_dir, model_dir, free_port(), tmp_dir=tmp_dir)
    first.kill()  # SIGKILL: no lifespan, no exit handlers; its id stays in pgserver's list
    first.wait(10)
    assert postgres_processes(pgdata), "precondition: the killed server left Postgres running"

    second = start_serve(data_dir, model_dir, free_port())
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) is not None

    assert not wait_gone(pgdata, 15), "SIGTERM left `postgres -D` running"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_before_stopping(data_dir: Path, model_dir: Path, workers: int) -> None:
    """Behind a load balancer: after SIGTERM /healthcheck says "draining" (503) while requests
    are still answered, for RAIOX_DRAIN_SECONDS; then the server stops and removes its
    temporary directories (the drain marker's, the workers' metrics)."""
    port = free_port()
    tmp_dir = data_dir / "tmp"
    tmp_dir.mkdir()
    proc = start_serve(data_dir, model_dir, port, workers=workers, drain_seconds=4, tmp_dir=tmp_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{base}/healthcheck", timeout=10).json()["status"] != "draining"
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        health = [httpx.get(f"{base}/healthcheck", timeout=10) for _ in range(2 * workers)]
        assert {(r.status_code, r.json()["status"]) for r in health} == {(503, "draining")}
        assert httpx.get(f"{base}/implants", timeout=10).status_code == 200
        assert proc.poll() is None
        proc.wait(60)
        assert time.monotonic() - signalled >= 3.5, "stopped before the drain was over"
        left = sorted(p.name for p in tmp_dir.glob("raiox-*"))
        assert not left, f"the stopped server left {left} in its TMPDIR"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_of_raiox_demo_stops_the_embedded_postgres(data_dir: Path, model_dir: Path) -> None:
    """Ctrl-C (SIGINT), as `make run` users stop it; `raiox serve` is stopped with SIGTERM above."""
    pgdata = (data_dir / "postgres").resolve()
    port = free_port()
    log = data_dir / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "demo", "--port", str(port)],
            env={**appliance_env(data_dir, model_dir), "PYTHONFAULTHANDLER": "1"},
            cwd=data_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while "Serving on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        assert postgres_processes(pgdata), "precondition: the demo runs the embedded Postgres"
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # show where it hangs: every thread's stack
            proc.send_signal(signal.SIGABRT)
            proc.wait(10)
            raise AssertionError(log.read_text()[-6000:]) from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not wait_gone(pgdata, 15), "Ctrl-C of `raiox demo` left `postgres -D` running"
    assert "shutdown failed" not in log.read_text(), log.read_text()[-2000:]
