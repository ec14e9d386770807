"""One frozen Settings object read from RAIOX_* environment variables (and a `.env` file).

Everything configurable lives here, grouped by the part of the appliance that uses it, so a
wrong value fails at start with the variable's name in the message instead of deep inside a
request at 3 a.m. Each field names its variable and holds its one default; each component is
handed only its own part (`settings.cache`, `settings.spaces`, ...).
"""

from __future__ import annotations

import dataclasses
import os
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from appliance import tls
from appliance.intake.fields import MAPPABLE_FIELDS

DEFAULT_JOTFORM_ORIGINS = (
    "https://www.jotform.com",
    "https://files.jotform.com",
    "https://eu.jotform.com",
    "https://hipaa.jotform.com",
)


P = TypeVar("P")


class SettingsError(ValueError):
    """A RAIOX_* variable is missing, malformed or inconsistent."""


def _var(env: str, default: Any = None, *, secret: bool = False) -> Any:
    """A setting read from `env`; secrets stay out of repr (and so out of logs)."""
    return field(default=default, repr=not secret, metadata={"env": env})


def env_name(part: Any, name: str) -> str:
    """The RAIOX_* variable behind a field of a settings part."""
    return str({f.name: f for f in fields(part)}[name].metadata["env"])


@dataclass(frozen=True)
class ImageLimits:
    """What an accepted image may weigh and measure (decompression bombs, huge uploads)."""

    max_bytes: int = _var("RAIOX_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
    max_pixels: int = _var("RAIOX_MAX_IMAGE_PIXELS", 60_000_000)
    max_side: int = _var("RAIOX_MAX_IMAGE_SIDE", 16_384)
    min_side: int = _var("RAIOX_MIN_IMAGE_SIDE", 32)  # nothing can be seen in a 2x2 image


@dataclass(frozen=True)
class EncoderSettings:
    """ONNX Runtime threads, micro-batching and the encoder queue.

    Tuned on 2 cores (tests/bench/model.py and http.py, int8 ViT-B/32). One ORT worker of
    2 intra-op threads: a lone request encodes in 20-25 ms instead of ~38 ms on one thread;
    two 1-thread workers encode ~10% more images/s at batch 8 but leave a lone request on
    one core. inter-op 1: the graph runs sequentially. Batch 8: ~18.5 ms per image against
    ~29 ms at batch 1; batch 4 gave ~7% less throughput. The wait only applies while other
    requests are still being preprocessed (see identification/batching.py).
    """

    intra_op_threads: int = _var("RAIOX_INTRA_OP_THREADS", 2)
    inter_op_threads: int = _var("RAIOX_INTER_OP_THREADS", 1)
    batch_max_size: int = _var("RAIOX_BATCH_MAX_SIZE", 8)
    batch_max_wait_ms: float = _var("RAIOX_BATCH_MAX_WAIT_MS", 2.0)
    queue_max: int = _var("RAIOX_QUEUE_MAX", 64)
    queue_wait_seconds: float = _var("RAIOX_QUEUE_WAIT_SECONDS", 10.0)
    # cpu (the int8 graph) or cuda (the fp16 graph of `raiox model build --precision fp16`).
    execution_provider: str = _var("RAIOX_EXECUTION_PROVIDER", "cpu")


@dataclass(frozen=True)
class CatalogSettings:
    """How the catalog is searched.

    The threshold was measured (tests/bench/catalog.py): the exact scan costs ~2 ms of server
    CPU per 1000 references, the HNSW path ~1-3 ms at any size with the exact top 3; at 2000
    references the scan already takes twice the index path's time.
    """

    top_k: int = _var("RAIOX_TOP_K", 3)
    hnsw_threshold: int = _var("RAIOX_HNSW_THRESHOLD", 2000)


@dataclass(frozen=True)
class CacheSettings:
    """The embedding cache: Redis when a URL is set, else a bounded in-process one."""

    redis_url: str | None = _var("RAIOX_REDIS_URL")
    # CA certificate(s) a rediss:// server's certificate must chain to (appliance.tls).
    ca_file: Path | None = _var("RAIOX_REDIS_CA_FILE")  # noqa: RUF009
    ttl_seconds: int = _var("RAIOX_CACHE_TTL_SECONDS", 30 * 24 * 3600)
    timeout_seconds: float = _var("RAIOX_CACHE_TIMEOUT_SECONDS", 0.05)
    memory_max_bytes: int = _var("RAIOX_CACHE_MEMORY_MAX_BYTES", 32 * 1024 * 1024)


@dataclass(frozen=True)
class SpacesSettings:
    """The S3-compatible replica (DigitalOcean Spaces); all four of endpoint, bucket and keys,
    or none (replication off)."""

    endpoint: str | None = _var("RAIOX_SPACES_ENDPOINT")
    region: str | None = _var("RAIOX_SPACES_REGION")
    bucket: str | None = _var("RAIOX_SPACES_BUCKET")
    access_key: str | None = _var("RAIOX_SPACES_ACCESS_KEY", secret=True)
    secret_key: str | None = _var("RAIOX_SPACES_SECRET_KEY", secret=True)
    presign_seconds: int = _var("RAIOX_SPACES_PRESIGN_SECONDS", 300)

    @property
    def enabled(self) -> bool:
        return all((self.endpoint, self.bucket, self.access_key, self.secret_key))


@dataclass(frozen=True)
class SyncSettings:
    """The replication worker: retries, leases, backoff, and local retention."""

    max_attempts: int = _var("RAIOX_SYNC_MAX_ATTEMPTS", 8)
    poll_seconds: float = _var("RAIOX_SYNC_POLL_SECONDS", 2.0)
    lease_seconds: float = _var("RAIOX_SYNC_LEASE_SECONDS", 300.0)
    backoff_base_seconds: float = _var("RAIOX_SYNC_BACKOFF_BASE_SECONDS", 2.0)
    backoff_cap_seconds: float = _var("RAIOX_SYNC_BACKOFF_CAP_SECONDS", 3600.0)
    concurrency: int = _var("RAIOX_SYNC_CONCURRENCY", 4)
    local_retention_days: int | None = _var("RAIOX_LOCAL_RETENTION_DAYS")
    metrics_port: int | None = _var("RAIOX_SYNC_METRICS_PORT")  # unset: no metrics server


@dataclass(frozen=True)
class RetentionSettings:
    """Patient-data retention (appliance.retention): the personal data of submissions older
    than `days` is erased, locally and in Spaces. 0 keeps everything (the default): how long
    clinical records must be kept is the clinic's decision, not the appliance's."""

    days: int = _var("RAIOX_RETENTION_DAYS", 0)

    @property
    def enabled(self) -> bool:
        return self.days > 0


@dataclass(frozen=True)
class BackupSettings:
    """`raiox backup`: where backups are written and how many are kept."""

    dir: Path | None = _var("RAIOX_BACKUP_DIR")  # noqa: RUF009  (unset: <data dir>/backups)
    keep: int = _var("RAIOX_BACKUP_KEEP", 14)


@dataclass(frozen=True)
class JotformSettings:
    """Webhooks (Jotform's and the generic one) and the downloads they lead to."""

    webhook_token: str | None = _var("RAIOX_WEBHOOK_TOKEN", secret=True)
    api_key: str | None = _var("RAIOX_JOTFORM_API_KEY", secret=True)
    upload_origins: tuple[str, ...] = _var("RAIOX_JOTFORM_UPLOAD_ORIGINS", DEFAULT_JOTFORM_ORIGINS)
    field_map: tuple[tuple[str, str], ...] = _var("RAIOX_JOTFORM_FIELD_MAP", ())
    verify_submissions: bool = _var("RAIOX_JOTFORM_VERIFY_SUBMISSIONS", False)
    api_url: str = _var("RAIOX_JOTFORM_API_URL", "https://api.jotform.com")
    download_timeout_seconds: float = _var("RAIOX_DOWNLOAD_TIMEOUT_SECONDS", 15.0)
    result_link_minutes: int = _var("RAIOX_RESULT_LINK_MINUTES", 30)
    max_images_per_delivery: int = _var("RAIOX_MAX_IMAGES_PER_DELIVERY", 10)


@dataclass(frozen=True)
class ServerSettings:
    """Where `raiox serve` listens and how answers spell their URLs."""

    host: str = _var("RAIOX_HOST", "127.0.0.1")
    port: int = _var("RAIOX_PORT", 8000)
    public_base_url: str | None = _var("RAIOX_PUBLIC_BASE_URL")
    # Limits when serving directly (appliance.server): open connections per worker, time to
    # deliver a request's headers, idle time between keep-alive requests.
    max_connections: int = _var("RAIOX_MAX_CONNECTIONS", 1000)
    header_timeout_seconds: float = _var("RAIOX_HEADER_TIMEOUT_SECONDS", 10.0)
    keepalive_timeout_seconds: float = _var("RAIOX_KEEPALIVE_TIMEOUT_SECONDS", 5.0)
    # After SIGTERM, keep serving this long with /healthcheck at 503 (appliance.draining):
    # behind a load balancer, longer than its health-check interval; alone, 0.
    drain_seconds: float = _var("RAIOX_DRAIN_SECONDS", 0.0)

    @property
    def behind_tls(self) -> bool:
        """Cookies get the Secure flag when the appliance is reached over https."""
        return (self.public_base_url or "").startswith("https://")


@dataclass(frozen=True)
class AccessSettings:
    """Closed by default (appliance.api.access): API keys unless open; per-minute request
    limits (0 turns one off); the free space below which new images are refused."""

    open_access: bool = _var("RAIOX_OPEN_ACCESS", False)
    rate_limit_key_per_minute: int = _var("RAIOX_RATE_LIMIT_KEY_PER_MINUTE", 120)
    rate_limit_address_per_minute: int = _var("RAIOX_RATE_LIMIT_ADDRESS_PER_MINUTE", 120)
    min_free_disk_bytes: int = _var("RAIOX_MIN_FREE_DISK_BYTES", 1024 * 1024 * 1024)


@dataclass(frozen=True)
class AdminSettings:
    """The staff console (/admin)."""

    session_minutes: int = _var("RAIOX_ADMIN_SESSION_MINUTES", 8 * 60)


@dataclass(frozen=True)
class Settings:
    # Path is immutable: one shared default instance is safe.
    data_dir: Path = _var("RAIOX_DATA_DIR", Path("./data"))  # noqa: RUF009
    model_dir: Path = _var("RAIOX_MODEL_DIR", Path("./models/current"))  # noqa: RUF009
    allow_untrained_model: bool = _var("RAIOX_ALLOW_UNTRAINED_MODEL", False)
    database_url: str | None = _var("RAIOX_DATABASE_URL")
    # CA certificate(s) for sslmode=verify-full to an external Postgres (appliance.tls).
    database_ca_file: Path | None = _var("RAIOX_DATABASE_CA_FILE")  # noqa: RUF009

    limits: ImageLimits = field(default_factory=ImageLimits)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    spaces: SpacesSettings = field(default_factory=SpacesSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    jotform: JotformSettings = field(default_factory=JotformSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def backups_dir(self) -> Path:
        return self.backup.dir or self.data_dir / "backups"

    @classmethod
    def from_env(
        cls, environ: dict[str, str] | None = None, env_file: Path | None = None
    ) -> Settings:
        """Read RAIOX_* variables; a `.env` file fills in what the environment leaves unset."""
        env = dict(_read_env_file(env_file or Path(".env")))
        env.update(os.environ if environ is None else environ)
        settings = _read(cls, env)
        settings.validate()
        return settings

    def validate(self) -> None:
        self._validate_tls()
        _positive(self.limits, "max_bytes", "max_pixels", "max_side", "min_side")
        _positive(self.jotform, "max_images_per_delivery")
        _positive(self.server, "max_connections", "header_timeout_seconds")
        _positive(self.server, "keepalive_timeout_seconds")
        if self.server.drain_seconds < 0:
            raise SettingsError("RAIOX_DRAIN_SECONDS must be 0 (off) or positive")
        a = self.access
        for name in ("rate_limit_key_per_minute", "rate_limit_address_per_minute"):
            if getattr(a, name) < 0:
                raise SettingsError(f"{env_name(a, name)} must be 0 (off) or positive")
        if a.min_free_disk_bytes < 0:
            raise SettingsError("RAIOX_MIN_FREE_DISK_BYTES must be 0 (off) or positive")
        _positive(self.catalog, "top_k")
        _positive(self.encoder, "queue_max")
        _positive(self.admin, "session_minutes")
        _positive(self.sync, "max_attempts", "concurrency", "lease_seconds", "poll_seconds")
        _positive(self.backup, "keep")
        port = self.sync.metrics_port
        if port is not None and not 0 < port < 65536:
            raise SettingsError("RAIOX_SYNC_METRICS_PORT must be a TCP port (1-65535)")
        retention = self.sync.local_retention_days
        if retention is not None and retention < 1:
            raise SettingsError("RAIOX_LOCAL_RETENTION_DAYS must be at least 1 (unset keeps all)")
        if self.retention.days < 0:
            raise SettingsError("RAIOX_RETENTION_DAYS must be 0 (off) or a number of days")
        e = self.encoder
        if e.batch_max_size < 1 or e.intra_op_threads < 1 or e.inter_op_threads < 1:
            raise SettingsError("RAIOX_BATCH_MAX_SIZE and thread counts must be at least 1")
        if e.execution_provider not in ("cpu", "cuda"):
            raise SettingsError("RAIOX_EXECUTION_PROVIDER must be cpu or cuda")
        s = self.spaces
        spaces = (s.endpoint, s.bucket, s.access_key, s.secret_key)
        if any(spaces) and not all(spaces):
            raise SettingsError(
                "Spaces replication needs RAIOX_SPACES_ENDPOINT, _BUCKET, _ACCESS_KEY and "
                "_SECRET_KEY together; set all four or none"
            )
        j = self.jotform
        unknown = {v.lower() for _, v in j.field_map} - set(MAPPABLE_FIELDS)
        if unknown:
            raise SettingsError(
                f"RAIOX_JOTFORM_FIELD_MAP maps questions to unknown fields {sorted(unknown)}; "
                f"use {', '.join(MAPPABLE_FIELDS)}"
            )
        if j.verify_submissions and not j.api_key:
            raise SettingsError("RAIOX_JOTFORM_VERIFY_SUBMISSIONS needs RAIOX_JOTFORM_API_KEY")
        for origin in j.upload_origins:
            if not origin.startswith(("https://", "http://")) or origin.count("/") != 2:
                raise SettingsError(
                    f"RAIOX_JOTFORM_UPLOAD_ORIGINS entry {origin!r} must be scheme://host[:port]"
                )

    def _validate_tls(self) -> None:
        """An external database or cache is reached with its certificate verified, or the
        appliance does not start (appliance.tls)."""
        problem = tls.postgres_problem(self.database_url, self.database_ca_file)
        problem = problem or tls.redis_problem(self.cache.redis_url, self.cache.ca_file)
        if problem is not None:
            raise SettingsError(problem)


def _positive(part: Any, *names: str) -> None:
    for name in names:
        if getattr(part, name) <= 0:
            raise SettingsError(f"{env_name(part, name)} must be positive")


def _read(cls: type[P], env: dict[str, str]) -> P:
    """Build `cls` from env: a part recursively, a field from its variable when set."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[f.name] = _read(kind, env)
            continue
        var = f.metadata["env"]
        raw = env.get(var)
        if raw is not None and raw.strip():
            values[f.name] = _parse(var, kind, raw.strip())
    return cls(**values)


def _parse(var: str, kind: Any, raw: str) -> Any:
    if get_origin(kind) in (Union, types.UnionType):  # `X | None`: parse as X
        (kind,) = [arg for arg in get_args(kind) if arg is not type(None)]
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float, str, Path):
            return kind(raw)
        if kind == tuple[str, ...]:
            return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
        if kind == tuple[tuple[str, str], ...]:
            return tuple(_pair(item) for item in raw.split(",") if item.strip())
    except ValueError as exc:
        raise SettingsError(f"{var} has an invalid value") from exc
    raise TypeError(f"{var}: no parser for {kind}")


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(item)
    return key.strip(), value.strip()


def _read_env_file(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        pairs.append((key.strip(), value.strip().strip('"').strip("'")))
    return pairs
