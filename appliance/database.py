"""Postgres connection pool, the embedded server of the default install, and migrations.

With no RAIOX_DATABASE_URL the appliance runs its own PostgreSQL + pgvector (the `pgserver`
wheel) inside the data directory, listening on a unix socket only; otherwise it connects to the
URL (compose's pgvector/pgvector, or a managed Postgres over verified TLS: appliance.tls). Both
paths then run the same code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg
from pgvector.asyncpg import register_vector

from appliance import embedded_postgres, tls
from appliance.errors import AppError
from appliance.settings import Settings

log = logging.getLogger(__name__)

# One lock id for "a process is migrating": concurrent starts (several workers) wait in turn.
MIGRATION_LOCK_ID = 0x5241494F58


class DatabaseTlsError(AppError):
    """The database's TLS handshake failed: a configuration error that stops the start."""

    status_code = 503
    code = "database_tls"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered SQL files shipped in appliance/migrations, in order."""
    folder = resources.files("appliance") / "migrations"
    migrations = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            migrations.append(Migration(version, entry.name, entry.read_text()))
    migrations.sort(key=lambda m: m.version)
    return migrations


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


class EmbeddedPostgres:
    """PostgreSQL 16 + pgvector from the pgserver wheel, kept in the data directory."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._started = False

    def start(self) -> str:
        """Start (or join) the server and return a URL to the appliance's database."""
        url = embedded_postgres.start(self.pgdata)
        self._started = True
        return url

    def stop(self) -> None:
        """Leave the server; the last appliance process to leave stops it."""
        if self._started:
            self._started = False
            embedded_postgres.stop(self.pgdata)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on every release (RESET ALL, UNLISTEN, unlock advisory
    locks...): a round trip per request spent on session state this code never leaves behind
    (SET only as SET LOCAL, LISTEN never, advisory locks only on a migration's own
    connection). An open transaction is still rolled back by asyncpg itself."""


@asynccontextmanager
async def server_url(settings: Settings) -> AsyncIterator[str]:
    """The URL of the appliance's database (starting the embedded server while it is used),
    for tools that need a URL rather than a pool: pg_dump and pg_restore. It may hold the
    password: never log it."""
    if settings.database_url is not None:
        yield tls.postgres_url(settings.database_url, settings.database_ca_file)
        return
    embedded = EmbeddedPostgres(settings.postgres_dir)
    url = await asyncio.to_thread(embedded.start)
    try:
        yield url
    finally:
        await stop_embedded(embedded)


async def migrate(settings: Settings) -> list[str]:
    """`raiox migrate`: apply pending migrations without opening a pool; returns their names.
    The connection proves the TLS set-up as the api's start does."""
    async with server_url(settings) as url:
        conn = await _connect_at_start(url, settings)
        try:
            return await apply_migrations(conn)
        finally:
            await conn.close()


async def stop_embedded(embedded: EmbeddedPostgres) -> None:
    """Stop the embedded server off the event loop, or on it when the loop's thread pool is
    already gone: Ctrl-C in `raiox demo` runs the app's shutdown after asyncio.run has shut its
    executor down, and the server must still stop."""
    try:
        await asyncio.to_thread(embedded.stop)
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        embedded.stop()


class Database:
    """The asyncpg pool (with pgvector types registered) and, if embedded, its server."""

    def __init__(self, pool: asyncpg.Pool, embedded: EmbeddedPostgres | None) -> None:
        self.pool = pool
        self._embedded = embedded

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Database:
        embedded = None
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.postgres_dir)
            url = await asyncio.to_thread(embedded.start)
        else:
            url = tls.postgres_url(settings.database_url, settings.database_ca_file)
            warn_if_plaintext(settings.database_url)
        try:
            conn = await _connect_at_start(url, settings)
            try:
                if migrate:
                    await apply_migrations(conn)
            finally:
                await conn.close()
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=10,
                init=register_vector,
                reset=_keep_session,
                command_timeout=30,
                timeout=10,
            )
        except BaseException:
            if embedded is not None:
                await stop_embedded(embedded)
            raise
        assert pool is not None
        return cls(pool, embedded)

    async def close(self) -> None:
        await self.pool.close()
        if self._embedded is not None:
            await stop_embedded(self._embedded)

    async def ping(self) -> str | None:
        """None when the database answers, else a short reason (never the URL)."""
        try:
            async with asyncio.timeout(2):
                await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
            return f"database unreachable ({type(exc).__name__})"
        return None


def warn_if_plaintext(url: str) -> None:
    host = tls.postgres_plaintext_host(url)
    if host is not None:
        log.warning(
            "database TLS is off (sslmode=disable) for %s: patient data and the password cross "
            "the network in clear; only on a private network",
            host,
        )


async def _connect_at_start(url: str, settings: Settings) -> asyncpg.Connection:
    """The first connection, which also proves the TLS set-up: a certificate that does not
    verify is a configuration error with its own message, not a connection failure."""
    try:
        return await asyncpg.connect(url, timeout=10)
    except ssl.SSLError as exc:
        ca = settings.database_ca_file
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise DatabaseTlsError(
            f"the database's TLS certificate was refused ({reason}): check that "
            f"RAIOX_DATABASE_CA_FILE ({ca}) holds the provider's CA certificate and that "
            "RAIOX_DATABASE_URL names the host its certificate was issued for"
        ) from exc


DB_ERRORS: tuple[type[Exception], ...] = (
    ConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    TimeoutError,
)
"""Failures that mean "the database is down", as opposed to a bug in a query."""
