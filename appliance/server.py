"""Serving the app with uvicorn under limits that keep it answering when run directly, without
a proxy in front: slow or half-open clients, connection floods, the file-descriptor ceiling.

uvicorn alone never times out a connection that has not sent its request headers, and counts
such connections against its concurrency limit: one client holding ~20,000 half-open sockets
stopped the appliance answering anyone, and at the descriptor limit asyncio's accept loop
wrote hundreds of thousands of log lines. Here every connection must deliver its headers
within `header_timeout_seconds` of becoming idle, and once `max_connections` are open a new
one closes the oldest connection that is still waiting for headers, so a flood of idle
sockets cannot crowd out a real request. The descriptor soft limit is raised to the hard one,
and the connection cap stays below it with room for the pool, the model and the logs.

With several workers, each is its own process with its own metrics: they share them through
PROMETHEUS_MULTIPROC_DIR (appliance.metrics). A directory given in the environment (the api
image sets one) is emptied first, since values left by a previous run would be added to the
new ones; with several workers and none given, a temporary one is used. The variable must be
set before any worker imports prometheus_client, which is why `main` handles it first.

Run as `python -m appliance.server` (what `raiox serve` execs) or through `uvicorn_config`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shutil
import signal
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from appliance import draining
from appliance.logs import LOG_CONFIG, configure_logging
from appliance.settings import Settings

log = logging.getLogger(__name__)

# Descriptors kept free of client connections: the database pool, Redis, the model and its
# threads' files, logs, image files being written, outbound downloads.
FD_RESERVE = 256
H11_MAX_HEADER_BYTES = 16 * 1024
ACCEPT_BACKLOG = FD_RESERVE // 2
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Connections of this process still waiting for a request's headers, oldest first.
_waiting: OrderedDict[GuardedH11Protocol, None] = OrderedDict()


class ApplianceConfig(uvicorn.Config):
    """uvicorn's Config plus the two limits the protocol below reads (it is pickled into
    each worker process, so the limits travel with it)."""

    def __init__(
        self, app: Any, *, header_timeout: float, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and eviction of idle connections."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = getattr(self.config, "max_connections", None)
        if limit is not None and len(self.connections) >= limit and _waiting:
            oldest, _ = _waiting.popitem(last=False)
            oldest._close_idle()
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:
            self._headers_arrived()

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()
        if self.cycle is before and not self.transport.is_closing():
            self._await_headers()
        else:  # a pipelined request started right away
            self._headers_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        timeout = getattr(self.config, "header_timeout", None)
        if timeout is not None:
            self._header_timer = self.loop.call_later(timeout, self._close_idle)
        _waiting[self] = None

    def _headers_arrived(self) -> None:
        self._cancel_header_timer()
        _waiting.pop(self, None)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _close_idle(self) -> None:
        self._headers_arrived()
        if not self.transport.is_closing():
            self.transport.close()


def prepare_metrics_dir(workers: int) -> Path | None:
    """Returns the directory this call created (to remove at exit), if any."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    if workers > 1:
        created = Path(tempfile.mkdtemp(prefix="raiox-metrics-"))
        os.environ[MULTIPROC_ENV] = str(created)
        return created
    return None


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            log.warning("could not raise the file-descriptor limit from %d", soft)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(settings: Settings, fd_limit: int) -> int:
    """The connection cap per process: the setting, kept below the descriptor limit."""
    return max(16, min(settings.server.max_connections, fd_limit - FD_RESERVE))


def uvicorn_config(
    app: Any, settings: Settings, *, host: str, port: int, workers: int = 1
) -> ApplianceConfig:
    fd_limit = raise_fd_limit()
    cap = connection_cap(settings, fd_limit)
    log.info("file descriptors: %d; at most %d connections per worker", fd_limit, cap)
    return ApplianceConfig(
        app,
        header_timeout=settings.server.header_timeout_seconds,
        max_connections=cap,
        host=host,
        port=port,
        workers=workers,
        http=GuardedH11Protocol,
        proxy_headers=True,
        log_level="info",
        log_config=LOG_CONFIG,
        access_log=False,  # appliance.api.observability logs each request, without its path
        # Idle connections are evicted at `cap`; past it uvicorn answers 503 only while
        # that many requests are actually in flight.
        limit_concurrency=cap + 1,
        timeout_keep_alive=int(settings.server.keepalive_timeout_seconds),
        h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES,
        # asyncio accepts up to `backlog` sockets in one go before any of them reaches the
        # protocol (where eviction happens): keep that burst within the descriptor reserve.
        backlog=ACCEPT_BACKLOG,
        timeout_graceful_shutdown=30,
    )


def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Serve `appliance.asgi:app` in this process (or in `workers` processes)."""
    configure_logging()
    config = uvicorn_config("appliance.asgi:app", settings, host=host, port=port, workers=workers)
    drain = settings.server.drain_seconds
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        if drain:  # the supervisor passes SIGTERM on to the workers once the drain is over
            _drain_on_sigterm(drain, lambda: supervisor.signal_queue.append(signal.SIGTERM))
        supervisor.run()
    else:
        DrainingServer(config, drain).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on a first SIGTERM drains (appliance.draining) before stopping."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._drain_started = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig != signal.SIGTERM or not self._drain_seconds or self._drain_started:
            super().handle_exit(sig, frame)  # Ctrl-C, a second SIGTERM: at once
            return
        self._drain_started = True
        _start_drain(
            self._drain_seconds, lambda: super(DrainingServer, self).handle_exit(sig, frame)
        )


def _drain_on_sigterm(seconds: float, stop: Callable[[], None]) -> None:
    started = False

    def handler(sig: int, frame: Any) -> None:
        nonlocal started
        if started:
            stop()
            return
        started = True
        _start_drain(seconds, stop)

    signal.signal(signal.SIGTERM, handler)


def _start_drain(seconds: float, stop: Callable[[], None]) -> None:
    draining.begin()
    log.info("draining for %.0f s: /healthcheck answers 503, requests are still served", seconds)
    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()


def _exit_on_sigterm(sig: int, frame: Any) -> None:
    raise SystemExit(128 + sig)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m appliance.server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # uvicorn re-raises the SIGTERM it stopped on once it has shut down, with the handler it
    # found installed: the default one would kill the process before the `finally` below and
    # leave these temporary directories behind at every stop. This one exits normally.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    created = prepare_metrics_dir(args.workers)
    state = Path(tempfile.mkdtemp(prefix="raiox-serve-"))
    os.environ[draining.MARKER_ENV] = str(state / "draining")  # the workers inherit it
    try:
        serve(Settings.from_env(), host=args.host, port=args.port, workers=args.workers)
    finally:
        shutil.rmtree(state, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


if __name__ == "__main__":
    main()
