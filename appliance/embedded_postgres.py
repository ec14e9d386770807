"""The embedded PostgreSQL + pgvector of the default install (the `pgserver` wheel), and who
stops it.

pgserver counts its users in `<pgdata>/.handle_pids.json` and stops the server when the last
one leaves, but it never forgets a process that died without saying goodbye (SIGKILL, OOM,
power loss): after one such death every later clean exit leaves `postgres -D …` running
forever. So this module owns the count itself: before joining and before leaving it drops the
ids of processes that no longer exist, and whoever leaves an empty list stops the server,
whatever happened before. It leaves on close, and, as a backstop, at interpreter exit (the
CLI turns SIGTERM into the same KeyboardInterrupt as Ctrl-C, so exit handlers run on both).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "raiox"
HANDLES_FILE = ".handle_pids.json"

# Users per data directory inside this process (the CLI may open the database twice).
_users: dict[Path, int] = {}
_servers: dict[Path, Any] = {}
_mutex = threading.Lock()
_exit_hook_installed = False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _read_handles(pgdata: Path) -> list[int]:
    try:
        values = json.loads((pgdata / HANDLES_FILE).read_text())
    except FileNotFoundError:
        return []
    except ValueError:  # a torn write: nobody can be trusted to be in it
        log.warning("unreadable %s in %s; treating it as empty", HANDLES_FILE, pgdata)
        return []
    return [int(v) for v in values if isinstance(v, int)]


def _write_handles(pgdata: Path, pids: list[int]) -> None:
    (pgdata / HANDLES_FILE).write_text(json.dumps(pids))


def _interprocess_lock() -> Any:
    """pgserver's own lock, so that joining, leaving and pgserver's start never interleave."""
    from pgserver.postgres_server import PostgresServer

    return PostgresServer._lock


def live_handles(pgdata: Path, *, without: int | None = None) -> list[int]:
    """Rewrite the handle list without dead processes (and without `without`); the caller
    holds the lock. Returns the live ids left."""
    before = _read_handles(pgdata)
    after = [pid for pid in before if pid != without and _alive(pid)]
    dead = [pid for pid in before if pid != without and pid not in after]
    if dead:
        log.warning("embedded Postgres: forgetting processes that died without leaving %s", dead)
    if after != before:
        _write_handles(pgdata, after)
    return after


def start(pgdata: Path) -> str:
    """Start (or join) the server in `pgdata` and return a URL to the appliance's database."""
    from pgserver.postgres_server import PostgresServer

    global _exit_hook_installed
    pgdata = pgdata.expanduser().resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    with _mutex:
        with _interprocess_lock():
            live_handles(pgdata)
        # cleanup_mode=None: pgserver never stops the server on its own; `leave` does.
        server = PostgresServer(pgdata, cleanup_mode=None)
        with _interprocess_lock():
            pids = _read_handles(pgdata)
            if os.getpid() not in pids:
                _write_handles(pgdata, [*pids, os.getpid()])
        _servers[pgdata] = server
        _users[pgdata] = _users.get(pgdata, 0) + 1
        if not _exit_hook_installed:
            atexit.register(_leave_all)
            _exit_hook_installed = True
    existing = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in existing:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    return str(server.get_uri(database=EMBEDDED_DATABASE))


def stop(pgdata: Path) -> None:
    """One user of this process is done; the last one out of the last process stops it."""
    pgdata = pgdata.expanduser().resolve()
    with _mutex:
        count = _users.get(pgdata, 0) - 1
        if count > 0:
            _users[pgdata] = count
            return
        _users.pop(pgdata, None)
        server = _servers.pop(pgdata, None)
    if server is not None:
        _leave(pgdata, server)


def _leave(pgdata: Path, server: Any) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    from pgserver.utils import PostmasterInfo

    with _interprocess_lock():
        others = live_handles(pgdata, without=os.getpid())
        if others:
            log.info("embedded Postgres left running for processes %s", others)
            return
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return
        log.info("stopping the embedded Postgres (last user gone)")
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
        except Exception:  # pg_ctl failed or timed out: the postmaster must still go
            log.warning("pg_ctl stop failed; terminating the postmaster")
            if info.process is not None:
                info.process.terminate()


def _leave_all() -> None:
    """At interpreter exit: leave every server this process still uses."""
    with _mutex:
        held = list(_servers.items())
        _servers.clear()
        _users.clear()
    for pgdata, server in held:
        _leave(pgdata, server)
