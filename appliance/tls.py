"""TLS to an external Postgres and Redis (managed services): which URLs must verify the
server, and how each client is told to.

The rule, checked at start (Settings.validate), fails closed: a host that is not this machine
or one of its own private names must be reached with the server's certificate AND host name
verified. Local means a unix socket, a loopback address, `localhost`, or a single-label name
such as a Compose service (`postgres`, `redis`): public DNS never resolves a name without a
dot, so such a name was defined by whoever runs this machine. Anything else needs Postgres
`sslmode=verify-full` with RAIOX_DATABASE_CA_FILE, or Redis `rediss://` (verified against
RAIOX_REDIS_CA_FILE, or the system's trust store when unset). `sslmode=require` encrypts but
verifies nothing, so it is refused rather than quietly upgraded: the URL then says what every
client does, the appliance, pg_dump and the exporters alike. The one way around the rule is
explicit: `sslmode=disable` for a Postgres on a private network, announced by a warning at
every start.

The CA file has one place, its setting: never `sslrootcert` in the URL. The appliance adds it
to the URL it hands to asyncpg and pg_dump/pg_restore (both read libpq's parameters).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

VERIFY_FULL = "verify-full"
DISABLE = "disable"


def is_local_host(host: str) -> bool:
    """A unix socket, a loopback address, `localhost`, or a single-label name."""
    host = host.strip().strip("[]")
    if not host or host.startswith("/"):
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return "." not in host


def ca_file_problem(variable: str, path: Path) -> str | None:
    """Why `path` cannot serve as a CA bundle (unreadable, not PEM), or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        return f"{variable} {path} is not a readable PEM CA certificate file ({reason})"
    return None


# Postgres ---------------------------------------------------------------------------------


def postgres_hosts(url: str) -> list[str]:
    """The hosts a libpq URL names (several for a multi-host URL); "" is the default socket."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    hosts = [_strip_port(h) for h in netloc.split(",")] if netloc else []
    if not any(hosts):
        hosts = [h for v in parse_qs(parts.query).get("host", []) for h in v.split(",")]
    return hosts or [""]


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def postgres_sslmode(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get("sslmode")
    return values[-1] if values else None


def postgres_problem(url: str | None, ca_file: Path | None) -> str | None:
    """Why this URL + CA file must not be used (the message names the variables), or None."""
    if url is None:
        return None if ca_file is None else "RAIOX_DATABASE_CA_FILE needs RAIOX_DATABASE_URL"
    query = parse_qs(urlsplit(url).query)
    if "sslrootcert" in query:
        return (
            "RAIOX_DATABASE_URL names sslrootcert: give the CA file as RAIOX_DATABASE_CA_FILE "
            "instead (one place, read by the appliance, pg_dump and the exporter alike)"
        )
    mode = postgres_sslmode(url)
    if ca_file is not None and mode != VERIFY_FULL:
        return (
            f"RAIOX_DATABASE_CA_FILE is set, so RAIOX_DATABASE_URL must say sslmode=verify-full "
            f"(it says {mode or 'nothing'})"
        )
    remote = [h for h in postgres_hosts(url) if not is_local_host(h)]
    if remote and mode != DISABLE:
        if mode != VERIFY_FULL:
            return (
                f"RAIOX_DATABASE_URL reaches {remote[0]} without verifying its certificate "
                f"(sslmode={mode or 'prefer, the default'}): add sslmode=verify-full and set "
                "RAIOX_DATABASE_CA_FILE to the provider's CA certificate (sslmode=disable only "
                "on a private network, on purpose)"
            )
        if ca_file is None:
            return (
                f"RAIOX_DATABASE_URL reaches {remote[0]} with sslmode=verify-full: set "
                "RAIOX_DATABASE_CA_FILE to the provider's CA certificate (or to "
                "/etc/ssl/certs/ca-certificates.crt for a publicly trusted server certificate)"
            )
    return None if ca_file is None else ca_file_problem("RAIOX_DATABASE_CA_FILE", ca_file)


def postgres_plaintext_host(url: str) -> str | None:
    """The non-local host reached with sslmode=disable (to warn about at start), or None."""
    if postgres_sslmode(url) != DISABLE:
        return None
    remote = [h for h in postgres_hosts(url) if not is_local_host(h)]
    return remote[0] if remote else None


def postgres_url(url: str, ca_file: Path | None) -> str:
    """The URL with the CA file as libpq's `sslrootcert`, which asyncpg reads too. It may hold
    the password: never log it."""
    if ca_file is None:
        return url
    parts = urlsplit(url)
    param = "sslrootcert=" + quote(str(ca_file), safe="/")
    query = f"{parts.query}&{param}" if parts.query else param
    return urlunsplit(parts._replace(query=query))


# Redis ------------------------------------------------------------------------------------

# redis-py URL options that would weaken or move the verification the appliance sets itself.
REDIS_TLS_OPTIONS = ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_ca_path")


def redis_problem(url: str | None, ca_file: Path | None) -> str | None:
    """Why this URL + CA file must not be used, or None."""
    if not url:
        return None if ca_file is None else "RAIOX_REDIS_CA_FILE needs RAIOX_REDIS_URL"
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "RAIOX_REDIS_URL must start with redis://, rediss:// (TLS) or unix://"
    if ca_file is not None and parts.scheme != "rediss":
        return "RAIOX_REDIS_CA_FILE is set, so RAIOX_REDIS_URL must be rediss:// (TLS)"
    named = sorted(set(parse_qs(parts.query)) & set(REDIS_TLS_OPTIONS))
    if named:
        return (
            f"RAIOX_REDIS_URL sets {', '.join(named)}: the appliance always verifies the "
            "certificate and host name; give the CA file as RAIOX_REDIS_CA_FILE"
        )
    host = parts.hostname or ""
    if parts.scheme == "redis" and not is_local_host(host):
        return (
            f"RAIOX_REDIS_URL reaches {host} without TLS: use rediss:// (and "
            "RAIOX_REDIS_CA_FILE for a provider's own CA)"
        )
    if ca_file is not None:
        return ca_file_problem("RAIOX_REDIS_CA_FILE", ca_file)
    return None


def redis_tls_options(url: str, ca_file: Path | None) -> dict[str, Any]:
    """redis-py connection options for a rediss:// URL: verification spelled out rather than
    left to the library's defaults, which have changed between versions."""
    if urlsplit(url).scheme != "rediss":
        return {}
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": None if ca_file is None else str(ca_file),
    }


def is_tls_failure(exc: BaseException) -> bool:
    """A failed TLS handshake (certificate, host name, a plaintext server): a configuration
    error rather than an outage. redis-py folds the ssl error into its ConnectionError's text."""
    return isinstance(exc, ssl.SSLError) or "[SSL" in str(exc)
