"""What a backup is on disk: the dump, its manifest, `latest.json`, and retention.

Every file is written privately (0600 in a 0700 folder) and atomically; `latest.json` only
ever names a backup that is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.errors import AppError

FORMAT_VERSION = 1

LATEST = "latest.json"


_NAME = re.compile(r"^raiox-(\d{8}T\d{6}Z)\.(dump|json)$")


class BackupError(AppError):
    status_code = 500
    code = "backup_failed"


class RestoreRefusedError(AppError):
    status_code = 409
    code = "restore_refused"


@dataclass(frozen=True)
class BackupManifest:
    dump_file: str
    created_at: str  # ISO 8601, UTC
    appliance_version: str
    model_id: str | None  # the model directory's, when the backup was taken
    catalog_model_ids: list[str]  # the models the stored embeddings were made with
    schema_version: int  # highest applied migration
    tables: dict[str, int]  # exact row counts, from the snapshot pg_dump read
    dump_sha256: str
    dump_size_bytes: int
    server_version: str
    pg_dump_version: str
    format_version: int = FORMAT_VERSION

    @property
    def created_at_unix(self) -> float:
        return datetime.fromisoformat(self.created_at).timestamp()

    @property
    def pg_dump_major(self) -> int:
        return int(self.pg_dump_version.split(".")[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown manifest format {data.get('format_version')!r}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def load(cls, path: Path) -> BackupManifest:
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RestoreRefusedError(
                f"no manifest {path.name} beside the dump: it cannot be verified"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RestoreRefusedError(f"unreadable manifest {path}: {exc}") from exc


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file renamed over it), mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def to_json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def model_id_of(model_dir: Path | None) -> str | None:
    if model_dir is None or not (model_dir / "manifest.json").is_file():
        return None
    try:
        return str(json.loads((model_dir / "manifest.json").read_text())["model_id"])
    except (ValueError, KeyError):
        return None


def _backups(out_dir: Path) -> dict[str, list[Path]]:
    """Files of each backup, by timestamp (which sorts as it reads)."""
    found: dict[str, list[Path]] = {}
    for path in out_dir.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.setdefault(match.group(1), []).append(path)
    return found


def apply_retention(out_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups (dump and manifest together)."""
    backups = _backups(out_dir)
    removed = []
    for stamp in sorted(backups)[: max(len(backups) - keep, 0)]:
        for path in backups[stamp]:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def record_spaces_copy(out_dir: Path, manifest: BackupManifest, error: str | None) -> None:
    """Note in `latest.json` whether the newest backup also reached Spaces."""
    latest = manifest.to_dict() | {"spaces_copy": "failed" if error else "done"}
    if error:
        latest["spaces_error"] = error
    write_private(out_dir / LATEST, to_json(latest))


def last_success_timestamp(out_dir: Path) -> float:
    """When the newest good backup was taken (Unix seconds); 0 when there is none."""
    try:
        data = json.loads((out_dir / LATEST).read_text(encoding="utf-8"))
        return datetime.fromisoformat(str(data["created_at"])).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
