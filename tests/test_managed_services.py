"""A managed Postgres and Redis over verified TLS (appliance.tls, compose/compose.managed.yaml).

Live: the appliance reaches the real Postgres + pgvector through a TLS endpoint that presents a
certificate from a test CA for `localhost` (tests/fixtures/tls.py says why an endpoint), and a
real redis-server that listens with TLS only. With the CA file and the right host name it
migrates, identifies, backs up and restores over TLS; with another CA, or a certificate for
another name, it refuses to start with a message that names the setting. A Redis whose TLS
fails stops the start; a Redis that is down only degrades the cache.
Static: which URLs the settings refuse, and the Compose override.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from appliance import tls
from appliance.app import create_app
from appliance.backup.create import create_backup
from appliance.backup.pgtools import PgTool, PgToolError, find_tool, needs_tls, speaks_tls
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.catalog.importer import demo_specs
from appliance.cli.main import app as cli
from appliance.components import Components, open_components
from appliance.database import Database, DatabaseTlsError, server_url, warn_if_plaintext
from appliance.identification.cache import CacheTlsError, RedisEmbeddingCache
from appliance.identification.encoder import Encoder
from appliance.settings import CacheSettings, Settings, SettingsError
from tests.fixtures.appliance import appliance_settings, asgi_client, load_catalog, quiet_progress
from tests.fixtures.compose import compose_config, needs_compose
from tests.fixtures.redis import free_port
from tests.fixtures.tls import TestCa, TlsPostgres, TlsRedis

pytestmark = pytest.mark.usefixtures("test_ca")

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "compose" / "probe.py"


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env, env_file=Path("/nonexistent"))


# --- which URLs start at all -------------------------------------------------------------


REMOTE = "db-postgresql-nyc3-1234.b.db.ondigitalocean.com:25060"


@pytest.mark.parametrize(
    ("url", "with_ca", "refusal"),
    [
        (f"postgresql://u:p@{REMOTE}/raiox?sslmode=require", True, "must say sslmode=verify-full"),
        (f"postgresql://u:p@{REMOTE}/raiox?sslmode=require", False, "without verifying"),
        (f"postgresql://u:p@{REMOTE}/raiox", False, "prefer, the default"),
        (f"postgresql://u:p@{REMOTE}/raiox?sslmode=verify-ca", False, "without verifying"),
        (f"postgresql://u:p@{REMOTE}/raiox?sslmode=verify-full", False, "RAIOX_DATABASE_CA_FILE"),
        ("postgresql://u:p@10.0.0.5/raiox?sslmode=require", False, "10.0.0.5 without verifying"),
        ("postgresql://u:p@a.example,b.example/raiox?sslmode=prefer", False, "a.example"),
        (
            f"postgresql://u:p@{REMOTE}/raiox?sslmode=verify-full&sslrootcert=/x",
            False,
            "sslrootcert",
        ),
        ("postgresql://raiox:p@postgres:5432/raiox", True, "must say sslmode=verify-full"),
    ],
)
def test_a_database_url_without_verification_is_refused(
    url: str, with_ca: bool, refusal: str, test_ca: TestCa
) -> None:
    env = {"RAIOX_DATABASE_URL": url}
    if with_ca:
        env["RAIOX_DATABASE_CA_FILE"] = str(test_ca.ca_file)
    with pytest.raises(SettingsError, match=re.escape(refusal)):
        _settings(env)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:p@{REMOTE}/raiox?sslmode=verify-full",  # with the CA file
        "postgresql://raiox:p@postgres:5432/raiox",  # the stack's own container
        "postgresql://raiox@localhost/raiox",
        "postgresql://raiox@127.0.0.1:5432/raiox?sslmode=prefer",
        "postgresql://raiox@[::1]:5432/raiox",
        "postgresql://postgres:@/raiox?host=/tmp/sockets",
        "postgresql://u:p@10.0.0.5/raiox?sslmode=disable",  # opened on purpose (warned)
    ],
)
def test_verified_or_local_database_urls_start(url: str, test_ca: TestCa) -> None:
    env = {"RAIOX_DATABASE_URL": url}
    if "verify-full" in url:
        env["RAIOX_DATABASE_CA_FILE"] = str(test_ca.ca_file)
    assert _settings(env).database_url == url


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    url = f"postgresql://u:p@{REMOTE}/raiox?sslmode=verify-full"
    missing, garbage = tmp_path / "missing.crt", tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    for path in (missing, garbage):
        with pytest.raises(SettingsError, match=f"RAIOX_DATABASE_CA_FILE {path}"):
            _settings({"RAIOX_DATABASE_URL": url, "RAIOX_DATABASE_CA_FILE": str(path)})
    with pytest.raises(SettingsError, match="RAIOX_DATABASE_CA_FILE needs RAIOX_DATABASE_URL"):
        _settings({"RAIOX_DATABASE_CA_FILE": str(garbage)})


@pytest.mark.parametrize(
    ("url", "with_ca", "refusal"),
    [
        ("redis://cache.example.com:6379/0", False, "without TLS: use rediss://"),
        ("redis://10.0.0.7:6379/0", False, "without TLS"),
        ("redis://redis:6379/0", True, "must be rediss://"),
        ("rediss://cache.example.com:25061/0?ssl_cert_reqs=none", False, "ssl_cert_reqs"),
        ("rediss://cache.example.com:25061/0?ssl_check_hostname=false", False, "always verifies"),
        ("http://cache.example.com", False, "must start with"),
    ],
)
def test_a_redis_url_without_verified_tls_is_refused(
    url: str, with_ca: bool, refusal: str, test_ca: TestCa
) -> None:
    env = {"RAIOX_REDIS_URL": url}
    if with_ca:
        env["RAIOX_REDIS_CA_FILE"] = str(test_ca.ca_file)
    with pytest.raises(SettingsError, match=re.escape(refusal)):
        _settings(env)


def test_redis_urls_that_start(test_ca: TestCa) -> None:
    ca = str(test_ca.ca_file)
    assert _settings({"RAIOX_REDIS_URL": "redis://redis:6379/0"}).cache.ca_file is None
    assert _settings({"RAIOX_REDIS_URL": "rediss://cache.example.com:25061"}).cache.redis_url
    settings = _settings({"RAIOX_REDIS_URL": "rediss://c.example:1/0", "RAIOX_REDIS_CA_FILE": ca})
    assert settings.cache.ca_file == Path(ca)
    # Verification is spelled out, whatever the library's defaults.
    assert tls.redis_tls_options("rediss://c.example:1/0", Path(ca)) == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": ca,
    }


def test_the_ca_file_reaches_libpq_and_asyncpg_as_sslrootcert(test_ca: TestCa) -> None:
    url = "postgresql://u:p%40w@db.example.com:25060/raiox?sslmode=verify-full"
    ca = Path("/etc/raiox/tls/database ca.crt")
    assert tls.postgres_url(url, ca) == url + "&sslrootcert=/etc/raiox/tls/database%20ca.crt"
    assert tls.postgres_url(url, None) == url


# --- Postgres over TLS --------------------------------------------------------------------


def _tls_settings(
    front: TlsPostgres, database: str, model_dir: Path, ca: Path, host: str = "localhost"
) -> Settings:
    return appliance_settings(front.url(database, host), model_dir, database_ca_file=ca)


def _new_database(pg_server: Any, name: str) -> str:
    pg_server.psql(f"DROP DATABASE IF EXISTS {name};")
    pg_server.psql(f"CREATE DATABASE {name};")
    return name


@pytest.fixture
async def tls_components(
    pg_server: Any, tls_postgres: TlsPostgres, test_ca: TestCa, model_dir: Path, encoder: Encoder
) -> AsyncIterator[Components]:
    database = _new_database(pg_server, "raiox_tls")
    settings = _tls_settings(tls_postgres, database, model_dir, test_ca.ca_file)
    async with open_components(settings, encoder=encoder) as comps:
        yield comps


async def test_migrates_and_identifies_over_verified_tls(
    tls_components: Components, tls_postgres: TlsPostgres
) -> None:
    comps = tls_components
    before = tls_postgres.handshakes
    version = await comps.database.pool.fetchval("SELECT max(version) FROM schema_migrations")
    assert version >= 6
    assert await comps.database.pool.fetchval("SELECT extname FROM pg_extension "
                                              "WHERE extname = 'vector'") == "vector"  # fmt: skip
    await load_catalog(comps, demo_specs(1))
    async with asgi_client(comps) as client:
        image = png_bytes(render_patient_sample(DEMO_IMPLANTS[3], seed=5))
        response = await client.post("/upload", files={"file": ("x.png", image)})
        assert response.status_code == 200, response.text
        assert len(response.json()["matches"]) == 3
        health = (await client.get("/healthcheck")).json()
        assert health["components"]["database"]["status"] == "ok"
    assert tls_postgres.refused_plaintext == 0
    assert tls_postgres.handshakes >= before  # the pool's connections are all TLS ones


async def test_backup_over_tls_hands_pg_dump_the_ca_and_a_client_that_speaks_tls(
    tls_components: Components, tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    """pg_dump gets sslmode=verify-full and the CA as libpq's sslrootcert, and only a client
    built with OpenSSL is chosen: the pgserver wheel's pg_dump (the one closest to its
    Postgres 16) has none, and this machine's other pg_dump is Debian's 15, too old for a 16
    server; the appliance image's postgresql-client-17 is both. So here the backup must stop
    with that explanation before writing anything, never try without TLS."""
    settings = tls_components.settings
    async with server_url(settings) as url:
        assert "sslmode=verify-full" in url and f"sslrootcert={settings.database_ca_file}" in url
        assert needs_tls(url)
        embedded = find_tool("pg_dump", 16)
        assert not speaks_tls(embedded), "expected the pgserver wheel's pg_dump here"
        if any(speaks_tls(t) for t in _pg_dumps() if t.major >= 16):
            pytest.skip("a TLS-capable pg_dump >= 16 is installed: the e2e covers this path")
        with pytest.raises(PgToolError, match="16 or newer with TLS support"):
            await create_backup(url, tmp_path / "backups", keep=2, progress=quiet_progress)
    assert not list((tmp_path / "backups").glob("*.dump"))


def _pg_dumps() -> list[PgTool]:
    found = [find_tool("pg_dump", 0)]
    debian = Path("/usr/lib/postgresql")
    for folder in debian.glob("*/bin/pg_dump") if debian.is_dir() else []:
        found.append(PgTool(folder, int(folder.parts[-3]), folder.parts[-3]))
    return found


def test_a_debian_pg_dump_speaks_tls() -> None:
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    if not debian:
        pytest.skip("no Debian PostgreSQL client on this machine")
    tool = PgTool(debian[-1], int(debian[-1].parts[-3]), debian[-1].parts[-3])
    assert speaks_tls(tool)
    assert find_tool("pg_dump", tool.major, tls=True).major >= tool.major


async def test_another_ca_stops_the_start_with_a_clear_error(
    pg_server: Any, tls_postgres: TlsPostgres, other_ca: TestCa, model_dir: Path
) -> None:
    database = _new_database(pg_server, "raiox_tls_wrong_ca")
    settings = _tls_settings(tls_postgres, database, model_dir, other_ca.ca_file)
    with pytest.raises(DatabaseTlsError) as refused:
        await Database.open(settings)
    assert "RAIOX_DATABASE_CA_FILE" in refused.value.detail
    assert "unable to get local issuer certificate" in refused.value.detail
    tables = pg_server.psql(
        f"\\c {database}\nSELECT count(*) FROM pg_tables WHERE schemaname = 'public';"
    )
    assert " 0" in tables, "nothing was migrated"


async def test_a_certificate_for_another_host_name_is_refused(
    pg_server: Any, tls_postgres: TlsPostgres, test_ca: TestCa, model_dir: Path
) -> None:
    """The endpoint's certificate names `localhost`; reached as 127.0.0.1 it must not pass."""
    database = _new_database(pg_server, "raiox_tls_wrong_name")
    settings = _tls_settings(tls_postgres, database, model_dir, test_ca.ca_file, "127.0.0.1")
    with pytest.raises(DatabaseTlsError, match="names the host") as refused:
        await Database.open(settings)
    assert "127.0.0.1" in refused.value.detail  # the reason says which name failed


def test_the_cli_refuses_to_start_on_a_wrong_ca(
    pg_server: Any, tls_postgres: TlsPostgres, other_ca: TestCa, tmp_path: Path
) -> None:
    database = _new_database(pg_server, "raiox_tls_cli")
    env = {
        "RAIOX_DATA_DIR": str(tmp_path),
        "RAIOX_DATABASE_URL": tls_postgres.url(database),
        "RAIOX_DATABASE_CA_FILE": str(other_ca.ca_file),
    }
    done = CliRunner().invoke(cli, ["migrate"], env=env)
    assert done.exit_code == 2, done.output
    assert "TLS certificate was refused" in done.output
    assert "RAIOX_DATABASE_CA_FILE" in done.output


@pytest.mark.parametrize(("trusted", "healthy"), [("test_ca", True), ("other_ca", False)])
def test_the_container_probe_verifies_with_the_ca_file(
    request: pytest.FixtureRequest, tls_postgres: TlsPostgres, trusted: str, healthy: bool
) -> None:
    ca: TestCa = request.getfixturevalue(trusted)
    env = {
        "PATH": os.environ["PATH"],
        "RAIOX_DATABASE_URL": tls_postgres.url("postgres"),
        "RAIOX_DATABASE_CA_FILE": str(ca.ca_file),
    }
    probe = subprocess.run(
        [sys.executable, PROBE, "postgres"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (probe.returncode == 0) is healthy, probe.stderr


async def test_sslmode_disable_to_a_remote_host_is_announced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="appliance.database"):
        warn_if_plaintext("postgresql://u:p@10.0.0.5/raiox?sslmode=disable")
        warn_if_plaintext("postgresql://raiox:p@postgres/raiox?sslmode=disable")
    (record,) = caplog.records
    assert "10.0.0.5" in record.getMessage() and "private network" in record.getMessage()
    assert "u:p" not in record.getMessage()


# --- Redis over TLS -----------------------------------------------------------------------


def _redis(server: TlsRedis, ca: Path | None, host: str = "localhost") -> RedisEmbeddingCache:
    return RedisEmbeddingCache(server.url(host), ttl_seconds=60, timeout_seconds=2.0, ca_file=ca)


async def test_redis_over_verified_tls_caches(tls_redis: TlsRedis, test_ca: TestCa) -> None:
    cache = _redis(tls_redis, test_ca.ca_file)
    try:
        await cache.check_at_start()
        vector = np.arange(512, dtype=np.float32)
        await cache.put("m", "abc", vector)
        cached = await cache.get("m", "abc")
        assert cached is not None and np.array_equal(cached, vector)
        assert (await cache.health()).ok
    finally:
        await cache.close()


@pytest.mark.parametrize("case", ["another CA", "another host name", "the system store"])
async def test_redis_tls_that_does_not_verify_stops_the_start(
    tls_redis: TlsRedis, test_ca: TestCa, other_ca: TestCa, case: str
) -> None:
    cache = {
        "another CA": lambda: _redis(tls_redis, other_ca.ca_file),
        "another host name": lambda: _redis(tls_redis, test_ca.ca_file, "127.0.0.1"),
        "the system store": lambda: _redis(tls_redis, None),
    }[case]()
    try:
        with pytest.raises(CacheTlsError, match="RAIOX_REDIS_CA_FILE") as refused:
            await cache.check_at_start()
        assert "TLS handshake failed" in refused.value.detail
        assert "CERTIFICATE_VERIFY_FAILED" in refused.value.detail
    finally:
        await cache.close()


async def test_a_tls_redis_that_is_down_only_degrades(test_ca: TestCa) -> None:
    """An outage is not a misconfiguration: the start goes on and the cache is skipped."""
    cache = RedisEmbeddingCache(
        f"rediss://localhost:{free_port()}/0", ttl_seconds=60, timeout_seconds=0.2,
        ca_file=test_ca.ca_file,
    )  # fmt: skip
    try:
        await cache.check_at_start()
        assert await cache.get("m", "abc") is None
        assert not (await cache.health()).ok
    finally:
        await cache.close()


async def test_the_server_does_not_start_on_a_redis_whose_tls_fails(
    tls_components: Components, tls_redis: TlsRedis, other_ca: TestCa
) -> None:
    """The app's start-up (its lifespan) runs the check: a wrong CA stops it."""
    settings = dataclasses.replace(
        tls_components.settings,
        cache=CacheSettings(redis_url=tls_redis.url(), ca_file=other_ca.ca_file),
    )
    with pytest.raises(BaseExceptionGroup) as refused:  # the lifespan's task group
        async with AsyncTestClient(app=create_app(settings)):
            pass
    assert refused.value.subgroup(CacheTlsError) is not None


# --- the Compose override -----------------------------------------------------------------

COMPOSE_DIR = ROOT / "compose"
MANAGED_ENV = {
    "RAIOX_VERSION": "1.0.0",
    "RAIOX_INFRA_TAG": "abc",
    "RAIOX_MODEL_PATH": "/opt/raiox/models/x",
    "RAIOX_POSTGRES_PASSWORD": "pw",
    "RAIOX_WEBHOOK_TOKEN": "tok",
    "RAIOX_GRAFANA_ADMIN_PASSWORD": "gpw",
    "RAIOX_DATABASE_URL": f"postgresql://doadmin:pw@{REMOTE}/raiox?sslmode=verify-full",
    "RAIOX_REDIS_URL": "rediss://default:pw@cache.example.com:25061/0",
    "RAIOX_DATABASE_CA_PATH": "/opt/raiox/tls/database-ca.crt",
    "RAIOX_REDIS_CA_PATH": "/opt/raiox/tls/redis-ca.crt",
}
MANAGED_VARIABLES = [k for k in MANAGED_ENV if k.startswith(("RAIOX_DATABASE", "RAIOX_REDIS"))]
CONNECTING = ("api", "sync", "backup", "postgres-exporter", "redis-exporter")
MANAGED_FILES = ("compose.yaml", "compose.managed.yaml")


@needs_compose
def test_the_managed_stack_has_no_local_database_or_cache(tmp_path: Path) -> None:
    done = compose_config(tmp_path, MANAGED_ENV, MANAGED_FILES)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert "postgres" not in services and "redis" not in services
    assert "postgres-data" not in config.get("volumes", {})
    for name, svc in services.items():
        assert not {"postgres", "redis"} & set(svc.get("depends_on") or {}), name
    for name in ("api", "sync", "backup"):
        env = services[name]["environment"]
        assert env["RAIOX_DATABASE_URL"] == MANAGED_ENV["RAIOX_DATABASE_URL"]
        assert env["RAIOX_REDIS_URL"] == MANAGED_ENV["RAIOX_REDIS_URL"]
        assert env["RAIOX_DATABASE_CA_FILE"] == "/etc/raiox/tls/database-ca.crt"
        assert env["RAIOX_REDIS_CA_FILE"] == "/etc/raiox/tls/redis-ca.crt"
    for name in CONNECTING:
        svc = services[name]
        mounts = {
            m["target"]: m for m in svc["volumes"] if m["target"].startswith("/etc/raiox/tls")
        }
        assert mounts, f"{name} gets no CA file"
        assert all(m["read_only"] for m in mounts.values()), f"{name}: CA mounted writable"
        assert "outbound" in svc["networks"], f"{name} cannot reach the managed service"
    exporter = services["postgres-exporter"]["environment"]
    assert exporter["PGSSLROOTCERT"] == "/etc/raiox/tls/database-ca.crt"
    assert "sslmode=verify-full" in exporter["DATA_SOURCE_NAME"]
    redis_exporter = services["redis-exporter"]
    assert redis_exporter["environment"]["REDIS_ADDR"].startswith("rediss://")
    assert not any("pw" in arg for arg in redis_exporter["command"]), "password on a command line"


@needs_compose
@pytest.mark.parametrize("missing", MANAGED_VARIABLES)
def test_the_managed_stack_requires_each_url_and_ca(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in MANAGED_ENV.items() if k != missing}
    done = compose_config(tmp_path, env, MANAGED_FILES)
    assert done.returncode != 0
    assert missing in done.stderr


def test_the_override_defaults_nothing_it_takes_from_env() -> None:
    text = (COMPOSE_DIR / "compose.managed.yaml").read_text()
    references = re.findall(r"\$\{([A-Z0-9_]+)([^}]*)\}", text)
    assert {name for name, _ in references} == set(MANAGED_VARIABLES)
    for name, rest in references:
        assert rest.startswith(":?"), f"${{{name}{rest}}} must be required"
    example = (COMPOSE_DIR / ".env.example").read_text()
    for name in MANAGED_VARIABLES:
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} not in .env.example"
