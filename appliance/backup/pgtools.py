"""pg_dump and pg_restore: finding a client that fits the server, and running it without
putting the database password on a command line (where `ps` shows it to every user).

The embedded default runs PostgreSQL 16 from the pgserver wheel, which ships its own client
binaries; the compose image has Debian's postgresql-client-17; a workstation may have any
other. pg_dump refuses a server newer than itself and pg_restore an archive newer than itself,
so the client is chosen by version rather than by whichever comes first on PATH.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from appliance.errors import AppError
from appliance.tls import postgres_sslmode


class PgToolError(AppError):
    status_code = 500
    code = "pg_tool_failed"


@dataclass(frozen=True)
class PgTool:
    path: Path
    major: int
    version: str  # as the tool reports it, e.g. "16.4"

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Connection:
    """A libpq URL without its password, and the environment that carries the password."""

    dsn: str
    env: dict[str, str]


def _search_dirs() -> list[Path]:
    dirs = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        dirs.append(Path(spec.origin).parent / "pginstall" / "bin")
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [d for d in debian.iterdir() if d.name.isdigit()]
        dirs += [d / "bin" for d in sorted(versions, key=lambda d: -int(d.name))]
    return dirs


def _version(path: Path) -> PgTool | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\) (\d+)(?:\.(\d+))?", out)
    if found is None:
        return None
    return PgTool(path, int(found.group(1)), found.group(0)[2:])


def speaks_tls(tool: PgTool) -> bool:
    """Whether the tool's libpq was built with OpenSSL (the pgserver wheel's is not). Asked of
    the pg_dump beside it with a socket that does not exist, so nothing is contacted: without
    OpenSSL libpq refuses `sslmode=require` before it tries to connect."""
    try:
        result = subprocess.run(
            [str(tool.path.parent / "pg_dump"), "--schema-only", "--dbname",
             "sslmode=require host=/nonexistent/raiox-tls-probe"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return "SSL support is not compiled in" not in result.stderr


def needs_tls(url: str) -> bool:
    """The URL asks for TLS (sslmode require, verify-ca or verify-full: appliance.tls)."""
    return postgres_sslmode(url) in ("require", "verify-ca", "verify-full")


def find_tool(name: str, min_major: int, *, tls: bool = False) -> PgTool:
    """The oldest available `name` of at least `min_major` (the closest to the server) and,
    for a server reached over TLS, one whose libpq speaks TLS."""
    paths = [d / name for d in _search_dirs() if (d / name).is_file()]
    on_path = shutil.which(name)
    if on_path:
        paths.append(Path(on_path))
    tools = [t for t in (_version(p) for p in paths) if t is not None]
    fitting = [t for t in tools if t.major >= min_major and (not tls or speaks_tls(t))]
    if not fitting:
        seen = ", ".join(f"{t.path} ({t.version})" for t in tools) or "none"
        kind = " with TLS support" if tls else ""
        raise PgToolError(
            f"{name} {min_major} or newer{kind} is needed (found: {seen}); install "
            f"postgresql-client-{min_major}"
        )
    return min(fitting, key=lambda t: t.major)


def connection(url: str) -> Connection:
    """Move the password from the URL into PGPASSWORD; asyncpg-only query parameters are
    not used by this appliance, so the rest of the URL is valid for libpq as it is."""
    parts = urlsplit(url)
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    netloc = parts.netloc.rpartition("@")
    if netloc[1]:
        user = netloc[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}@{netloc[2]}")
    return Connection(urlunsplit(parts), env)


async def run_tool(
    tool: PgTool,
    args: Sequence[str],
    conn: Connection,
    *,
    stdout: IO[Any] | None = None,
    on_progress: Callable[[str], bool] | None = None,
) -> None:
    """Run a client, feeding each stderr line to `on_progress` (True: a progress line it
    used); the other lines make the error message when the tool fails."""
    proc = await asyncio.create_subprocess_exec(
        str(tool.path),
        *args,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=conn.env,
    )
    assert proc.stderr is not None
    messages = []
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        if on_progress is None or not on_progress(line):
            messages.append(line)
    code = await proc.wait()
    if code != 0:
        password = conn.env.get("PGPASSWORD")
        errors = [m for m in messages if "error:" in m or "FATAL" in m]
        text = "; ".join((errors or messages)[-6:]) or "no message"
        if password:
            text = text.replace(password, "***")
        raise PgToolError(f"{tool.name} {tool.version} failed (exit {code}): {text}")


def list_archive(tool: PgTool, archive: Path, conn: Connection) -> list[str]:
    """The table of contents of a custom-format archive (`pg_restore --list`), by line."""
    result = subprocess.run(
        [str(tool.path), "--list", str(archive)],
        capture_output=True,
        text=True,
        env=conn.env,
        check=False,
    )
    if result.returncode != 0:
        raise PgToolError(f"{tool.name} cannot read {archive.name}: {result.stderr.strip()}")
    return result.stdout.splitlines(keepends=True)
