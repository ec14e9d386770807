"""API keys: made, listed, revoked and checked.

A key is `raiox_` + 43 URL-safe characters (32 random bytes) and is shown once, when it is
made. The database keeps only its SHA-256: for a 256-bit random secret a slow password hash
(argon2, bcrypt) adds nothing, since there is no dictionary to try, and a plain digest lets
one indexed lookup authenticate a request. The first characters are kept too, so an operator
can tell keys apart in `raiox apikey list` without the secret.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from appliance.errors import AppError

KEY_PREFIX = "raiox_"
SHOWN_CHARS = 10  # "raiox_" and 4 characters of the secret
CHECK_CACHE_SECONDS = 10.0


class ApiKeyNameTakenError(AppError):
    status_code = 409
    code = "api_key_name_taken"


class ApiKeyNotFoundError(AppError):
    status_code = 404
    code = "api_key_not_found"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The api_keys table. `check` remembers answers for a few seconds per process, so a busy
    client costs one query per key every CHECK_CACHE_SECONDS, and a revocation takes effect
    within that time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._recent: dict[bytes, tuple[float, str | None]] = {}

    async def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key named `name`; returns it with the secret, which is never stored."""
        name = name.strip()
        if not name or len(name) > 100:
            raise AppError("A key's name is 1-100 characters.")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO api_keys (name, key_sha256, prefix) VALUES ($1, $2, $3) "
                "RETURNING id, name, prefix, created_at, last_used_at, revoked_at",
                name,
                digest(secret),
                secret[:SHOWN_CHARS],
            )
        except asyncpg.UniqueViolationError:
            raise ApiKeyNameTakenError(f"An active key is already named {name!r}.") from None
        assert row is not None
        return ApiKey(**dict(row)), secret

    async def list(self) -> list[ApiKey]:
        rows = await self._pool.fetch(
            "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys "
            "ORDER BY revoked_at IS NOT NULL, name, id"
        )
        return [ApiKey(**dict(r)) for r in rows]

    async def revoke(self, name: str) -> int:
        """Revoke the active key named `name`; returns its id."""
        key_id = await self._pool.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL "
            "RETURNING id",
            name,
        )
        if key_id is None:
            raise ApiKeyNotFoundError(f"No active key is named {name!r}.")
        self._recent.clear()
        return int(key_id)

    async def check(self, key: str) -> str | None:
        """The name of the active key `key`, or None."""
        hashed = digest(key)
        now = time.monotonic()
        cached = self._recent.get(hashed)
        if cached is not None and now - cached[0] < CHECK_CACHE_SECONDS:
            return cached[1]
        name = await self._pool.fetchval(
            "UPDATE api_keys SET last_used_at = now() "
            "WHERE key_sha256 = $1 AND revoked_at IS NULL RETURNING name",
            hashed,
        )
        if len(self._recent) > 10_000:  # wrong keys must not grow this without bound
            self._recent.clear()
        self._recent[hashed] = (now, name)
        return None if name is None else str(name)
