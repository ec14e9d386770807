"""One frozen Settings object read from RAIOX_* environment variables (and a `.env` file).

Everything configurable lives here so that a wrong value fails at start, with the variable's
name in the message, instead of deep inside a request at 3 a.m.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_JOTFORM_ORIGINS = (
    "https://www.jotform.com",
    "https://files.jotform.com",
    "https://eu.jotform.com",
    "https://hipaa.jotform.com",
)

# The form fields RAIOX_JOTFORM_FIELD_MAP may map (appliance.jotform's FIELDS and FILE_FIELD).
JOTFORM_MAPPABLE_FIELDS = ("nome", "email", "paciente", "dente", "file")


class SettingsError(ValueError):
    """A RAIOX_* variable is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./data")
    model_dir: Path = Path("./models/current")
    allow_untrained_model: bool = False

    database_url: str | None = None
    redis_url: str | None = None
    cache_ttl_seconds: int = 30 * 24 * 3600
    cache_timeout_seconds: float = 0.05
    cache_memory_max_bytes: int = 32 * 1024 * 1024

    spaces_endpoint: str | None = None
    spaces_region: str | None = None
    spaces_bucket: str | None = None
    spaces_access_key: str | None = field(default=None, repr=False)
    spaces_secret_key: str | None = field(default=None, repr=False)
    spaces_presign_seconds: int = 300
    sync_max_attempts: int = 8
    sync_poll_seconds: float = 2.0
    sync_lease_seconds: float = 300.0
    sync_backoff_base_seconds: float = 2.0
    sync_backoff_cap_seconds: float = 3600.0
    sync_concurrency: int = 4
    local_retention_days: int | None = None

    webhook_token: str | None = field(default=None, repr=False)
    jotform_api_key: str | None = field(default=None, repr=False)
    jotform_upload_origins: tuple[str, ...] = DEFAULT_JOTFORM_ORIGINS
    jotform_field_map: tuple[tuple[str, str], ...] = ()
    jotform_verify_submissions: bool = False
    jotform_api_url: str = "https://api.jotform.com"
    download_timeout_seconds: float = 15.0
    result_link_minutes: int = 30

    max_upload_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 60_000_000
    max_image_side: int = 16_384

    # Tuned on 2 cores (tests/bench/model.py and http.py, int8 ViT-B/32). One ORT worker of
    # 2 intra-op threads: a lone request encodes in 20-25 ms instead of ~38 ms on one thread;
    # two 1-thread workers encode ~10% more images/s at batch 8 but leave a lone request on
    # one core. inter-op 1: the graph runs sequentially. Batch 8: ~18.5 ms per image against
    # ~29 ms at batch 1; batch 4 gave ~7% less throughput. The wait only applies while other
    # requests are still being preprocessed (see batching.py).
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    batch_max_size: int = 8
    batch_max_wait_ms: float = 2.0
    queue_max: int = 64
    queue_wait_seconds: float = 10.0

    top_k: int = 3
    hnsw_threshold: int = 5000

    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None

    @property
    def spaces_enabled(self) -> bool:
        return all(
            (
                self.spaces_endpoint,
                self.spaces_bucket,
                self.spaces_access_key,
                self.spaces_secret_key,
            )
        )

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the CLI use it)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)

    @classmethod
    def from_env(
        cls, environ: dict[str, str] | None = None, env_file: Path | None = None
    ) -> Settings:
        """Read RAIOX_* variables; a `.env` file fills in what the environment leaves unset."""
        env = dict(_read_env_file(env_file or Path(".env")))
        env.update(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"RAIOX_{f.name.upper()}")
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f.name, str(f.type), raw.strip())
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("max_upload_bytes", "max_image_pixels", "max_image_side", "top_k", "queue_max")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"RAIOX_{name.upper()} must be positive")
        sync = ("sync_max_attempts", "sync_concurrency", "sync_lease_seconds", "sync_poll_seconds")
        for name in sync:
            if getattr(self, name) <= 0:
                raise SettingsError(f"RAIOX_{name.upper()} must be positive")
        if self.local_retention_days is not None and self.local_retention_days < 1:
            raise SettingsError("RAIOX_LOCAL_RETENTION_DAYS must be at least 1 (unset keeps all)")
        if self.batch_max_size < 1 or self.intra_op_threads < 1 or self.inter_op_threads < 1:
            raise SettingsError("RAIOX_BATCH_MAX_SIZE and thread counts must be at least 1")
        spaces = (
            self.spaces_endpoint,
            self.spaces_bucket,
            self.spaces_access_key,
            self.spaces_secret_key,
        )
        if any(spaces) and not all(spaces):
            raise SettingsError(
                "Spaces replication needs RAIOX_SPACES_ENDPOINT, _BUCKET, _ACCESS_KEY and "
                "_SECRET_KEY together; set all four or none"
            )
        unknown = {v.lower() for _, v in self.jotform_field_map} - set(JOTFORM_MAPPABLE_FIELDS)
        if unknown:
            raise SettingsError(
                f"RAIOX_JOTFORM_FIELD_MAP maps questions to unknown fields {sorted(unknown)}; "
                f"use {', '.join(JOTFORM_MAPPABLE_FIELDS)}"
            )
        if self.jotform_verify_submissions and not self.jotform_api_key:
            raise SettingsError("RAIOX_JOTFORM_VERIFY_SUBMISSIONS needs RAIOX_JOTFORM_API_KEY")
        for origin in self.jotform_upload_origins:
            if not origin.startswith(("https://", "http://")) or origin.count("/") != 2:
                raise SettingsError(
                    f"RAIOX_JOTFORM_UPLOAD_ORIGINS entry {origin!r} must be scheme://host[:port]"
                )


def _parse(name: str, type_name: str, raw: str) -> Any:
    var = f"RAIOX_{name.upper()}"
    try:
        if "bool" in type_name:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "Path" in type_name:
            return Path(raw)
        if "tuple[tuple" in type_name:
            return tuple(_pair(item) for item in raw.split(",") if item.strip())
        if "tuple" in type_name:
            return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
        if "int" in type_name:
            return int(raw)
        if "float" in type_name:
            return float(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{var} has an invalid value") from exc


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
