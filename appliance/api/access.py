"""Who may use the API, how often, and whether there is room for another image.

Closed by default: /upload, /submissions, /implants and /references need an API key
(`Authorization: Bearer raiox_…`, made with `raiox apikey create NAME`) unless
RAIOX_OPEN_ACCESS=1 opens them to a trusted LAN or a demo. Webhooks keep their own token and
result pages their capability token, so neither is guarded here. Every guarded request counts
against its address (before the key is checked, so guessing keys is throttled too) and its key;
past either limit the answer is 429 with Retry-After. A new image is refused with 507 while the
data disk has less free space than RAIOX_MIN_FREE_DISK_BYTES, before its body is read.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from appliance.errors import AppError
from appliance.settings import Settings

API_KEY_STATE = "api_key"


class ApiKeyRequiredError(AppError):
    status_code = 401
    code = "api_key_required"
    headers = {"WWW-Authenticate": 'Bearer realm="raiox"'}


class InvalidApiKeyError(AppError):
    status_code = 401
    code = "invalid_api_key"
    headers = {"WWW-Authenticate": 'Bearer realm="raiox", error="invalid_token"'}


class RateLimitedError(AppError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InsufficientStorageError(AppError):
    status_code = 507
    code = "insufficient_storage"
    retry_after_s = 300


@dataclass
class RateLimiter:
    """Token buckets per client: `per_minute` requests a minute, bursts of a quarter of
    that. In-process (each worker counts its own); 0 turns it off."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_minute / 4)

    def wait_seconds(self, client: str) -> float:
        """0 when `client` may go ahead now (and count it), else how long until it may."""
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / rate
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget everyone rather than grow unbounded
                self._buckets.clear()
            return 0.0


@dataclass
class Access:
    open_access: bool
    per_key: RateLimiter
    per_address: RateLimiter
    data_dir: Path
    min_free_disk_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        access = settings.access
        return cls(
            open_access=access.open_access,
            per_key=RateLimiter(access.rate_limit_key_per_minute),
            per_address=RateLimiter(access.rate_limit_address_per_minute),
            data_dir=settings.data_dir,
            min_free_disk_bytes=access.min_free_disk_bytes,
        )

    def free_disk_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def disk_low(self) -> bool:
        return self.min_free_disk_bytes > 0 and self.free_disk_bytes() < self.min_free_disk_bytes


def _limit(limiter: RateLimiter, client: str, what: str) -> None:
    wait = limiter.wait_seconds(client)
    if wait > 0:
        raise RateLimitedError(
            f"Too many requests from this {what}; retry in {math.ceil(wait)} s.",
            retry_after_s=math.ceil(wait),
        )


def bearer_token(header: str | None) -> str:
    scheme, _, value = (header or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Guard of the keyed API: address limit, then the key (unless open), then its limit."""
    access: Access = connection.app.state.access
    address = connection.client.host if connection.client else "unknown"
    _limit(access.per_address, address, "address")
    token = bearer_token(connection.headers.get("authorization"))
    if not token:
        if access.open_access:
            return
        raise ApiKeyRequiredError(
            "This API needs a key: send `Authorization: Bearer <key>` (an operator makes one "
            "with `raiox apikey create NAME`)."
        )
    name = await connection.app.state.components.api_keys.check(token)
    if name is None:
        raise InvalidApiKeyError("The API key is unknown or revoked.")
    connection.state[API_KEY_STATE] = name
    _limit(access.per_key, name, "API key")


async def require_free_disk(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard of every route that stores a new image. A statvfs call is microseconds: async,
    it runs on the loop instead of costing every upload a hop to Litestar's thread pool."""
    access: Access = connection.app.state.access
    if access.disk_low():
        raise InsufficientStorageError(
            "The appliance's disk is almost full: new images are refused until space is freed "
            f"(free space below RAIOX_MIN_FREE_DISK_BYTES = {access.min_free_disk_bytes:,})."
        )


def authenticated_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The name of the key this request came with, if any."""
    value = connection.state.get(API_KEY_STATE)
    return str(value) if value else None
