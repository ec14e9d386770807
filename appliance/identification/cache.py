"""Embedding caches keyed by model id + sha256 of the image bytes: Redis in production, a
bounded in-process LRU in the embedded default. Both are best-effort: a cache failure never
fails a request, it only costs a model run. One exception, at start: a Redis whose TLS does
not verify is a configuration error, and the server refuses to start on it (an outage only
degrades)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from appliance import metrics, tls
from appliance.errors import AppError
from appliance.settings import CacheSettings

log = logging.getLogger(__name__)

# What an OrderedDict slot, the key string and the ndarray header cost besides the vector.
ENTRY_OVERHEAD_BYTES = 200
# A dead Redis is retried after this pause, growing by BACKOFF_GROWTH per failed probe up to
# BACKOFF_MAX_SECONDS: one request per pause pays the timeout, the others skip Redis at once.
BACKOFF_START_SECONDS = 1.0
BACKOFF_GROWTH = 1.5
BACKOFF_MAX_SECONDS = 5.0
# The start-up check's limit: a TLS handshake to a managed Redis takes a few round trips.
START_CHECK_SECONDS = 5.0
UNREACHABLE_DETAIL = "redis unreachable; embeddings are computed without the cache"
# Outage-shaped failures. ResponseError (the server answered, e.g. OOM) is a RedisError too.
REDIS_FAILURES = (RedisError, OSError, TimeoutError)


class CacheTlsError(AppError):
    """Redis answered the TLS handshake with a certificate that does not verify."""

    status_code = 503
    code = "cache_tls"


@dataclass(frozen=True)
class CacheHealth:
    backend: str  # "redis" | "memory"
    ok: bool
    detail: str  # human text; never the URL or the password


class EmbeddingCache(Protocol):
    backend: str

    async def get(self, model_id: str, sha256: str) -> np.ndarray | None: ...
    async def put(self, model_id: str, sha256: str, vector: np.ndarray) -> None: ...
    async def health(self) -> CacheHealth: ...
    async def check_at_start(self) -> None: ...
    async def close(self) -> None: ...


def cache_key(model_id: str, sha256: str) -> str:
    """Versioned so a change of value format can never be read as the old one."""
    return f"raiox:emb:v1:{model_id}:{sha256}"


def decode_vector(raw: bytes) -> np.ndarray | None:
    """None for a value no healthy writer produces (empty, torn, NaN), so it reads as a miss."""
    if not raw or len(raw) % 4:
        return None
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)  # a writable copy
    return vector if bool(np.isfinite(vector).all()) else None


class MemoryEmbeddingCache:
    """LRU bounded by bytes. No method awaits while it touches the dict, so each call is
    atomic on the event loop; it is not meant to be shared between threads."""

    backend = "memory"

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        metrics.CACHE_UP.labels(self.backend).set(1)

    async def get(self, model_id: str, sha256: str) -> np.ndarray | None:
        key = cache_key(model_id, sha256)
        vector = self._entries.get(key)
        metrics.CACHE_LOOKUPS.labels(self.backend, "miss" if vector is None else "hit").inc()
        if vector is None:
            return None
        self._entries.move_to_end(key)
        return vector.copy()

    async def put(self, model_id: str, sha256: str, vector: np.ndarray) -> None:
        key = cache_key(model_id, sha256)
        self._discard(key)
        value = np.array(vector, dtype=np.float32)  # a copy: the caller may reuse its array
        if value.nbytes + ENTRY_OVERHEAD_BYTES > self._max_bytes:
            return  # it would evict everything and then itself
        self._entries[key] = value
        self._bytes += value.nbytes + ENTRY_OVERHEAD_BYTES
        while self._bytes > self._max_bytes and self._entries:
            self._discard(next(iter(self._entries)))

    async def health(self) -> CacheHealth:
        return CacheHealth(
            self.backend,
            True,
            f"in-process, {len(self._entries)} entries, {self._bytes // 1024} KiB of "
            f"{self._max_bytes // 1024} KiB",
        )

    async def check_at_start(self) -> None:
        """Nothing to reach."""

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def _discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes + ENTRY_OVERHEAD_BYTES


class RedisEmbeddingCache:
    """After a failure Redis is skipped for a short, growing backoff, so a dead or hung Redis
    costs one timeout now and then instead of one per request. redis-py's pool drops a broken
    connection and opens a new one on the next command, so no reconnect logic lives here."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int,
        timeout_seconds: float,
        ca_file: Path | None = None,
    ) -> None:
        self._url, self._ca_file = url, ca_file
        self._client = aioredis.Redis.from_url(
            url,
            **tls.redis_tls_options(url, ca_file),
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            # One immediate retry replaces a pooled connection that died with a restarted
            # Redis. Timeouts are not retried, and redis-py's default (10 retries with
            # backoff) would hold a request for seconds.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._ttl = ttl_seconds
        # A hard ceiling over the retry and over name resolution, which no socket timeout covers.
        self._deadline = timeout_seconds * 3
        self._up = True
        self._down_since = 0.0
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_SECONDS
        metrics.CACHE_UP.labels(self.backend).set(1)

    async def get(self, model_id: str, sha256: str) -> np.ndarray | None:
        if self._skipping():
            metrics.CACHE_LOOKUPS.labels(self.backend, "error").inc()
            return None
        key = cache_key(model_id, sha256)
        try:
            async with asyncio.timeout(self._deadline):
                raw = await self._client.get(key)
                vector = decode_vector(raw) if isinstance(raw, bytes) else None
                if raw is not None and vector is None:
                    await self._client.delete(key)
        except REDIS_FAILURES as exc:
            self._failed(exc)
            metrics.CACHE_LOOKUPS.labels(self.backend, "error").inc()
            return None
        self._recovered()
        metrics.CACHE_LOOKUPS.labels(self.backend, "miss" if vector is None else "hit").inc()
        return vector

    async def put(self, model_id: str, sha256: str, vector: np.ndarray) -> None:
        if self._skipping():
            return
        data = np.asarray(vector, dtype="<f4").tobytes()
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.set(cache_key(model_id, sha256), data, ex=self._ttl)
        except REDIS_FAILURES as exc:
            self._failed(exc)
            return
        self._recovered()

    async def health(self) -> CacheHealth:
        """Always asks Redis, even inside a backoff, so health tells the truth right away."""
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.ping()
        except REDIS_FAILURES as exc:
            self._failed(exc)
            return CacheHealth(self.backend, False, UNREACHABLE_DETAIL)
        self._recovered()
        return CacheHealth(
            self.backend, True, f"redis answering; entries expire after {self._ttl} s"
        )

    async def check_at_start(self) -> None:
        """Raise CacheTlsError when the TLS handshake fails (a wrong CA file, a certificate
        for another host name, a plaintext server): a misconfiguration must stop the start,
        where an outage only degrades (as it does here: the cache is then skipped). A first
        TLS handshake can take longer than the per-request timeout, so the check has a client
        and a timeout of its own."""
        client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=START_CHECK_SECONDS,
            socket_connect_timeout=START_CHECK_SECONDS,
            **tls.redis_tls_options(self._url, self._ca_file),
        )
        try:
            async with asyncio.timeout(START_CHECK_SECONDS * 2):
                await client.ping()
        except REDIS_FAILURES as exc:
            if tls.is_tls_failure(exc):
                raise CacheTlsError(
                    f"Redis refused: {_reason(exc)}; check that RAIOX_REDIS_CA_FILE holds "
                    "the provider's CA certificate and that RAIOX_REDIS_URL names the host "
                    "its certificate was issued for"
                ) from exc
            self._failed(exc)
        finally:
            await client.aclose()

    async def close(self) -> None:
        await self._client.aclose()

    def _skipping(self) -> bool:
        """While down, the first caller after each pause probes Redis; the others skip it."""
        if self._up:
            return False
        now = time.monotonic()
        if now < self._retry_at:
            return True
        self._retry_at = now + self._deadline  # this probe's window; a failure moves it
        self._backoff = min(self._backoff * BACKOFF_GROWTH, BACKOFF_MAX_SECONDS)
        return False

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._up:
            log.warning(
                "embedding cache: redis unreachable (%s); identifying without the cache, "
                "retrying every %.0f-%.0f s",
                _reason(exc),
                BACKOFF_START_SECONDS,
                BACKOFF_MAX_SECONDS,
            )
            self._up = False
            self._down_since = now
            self._backoff = BACKOFF_START_SECONDS
        self._retry_at = now + self._backoff
        metrics.CACHE_UP.labels(self.backend).set(0)

    def _recovered(self) -> None:
        if not self._up:
            log.warning(
                "embedding cache: redis reachable again after %.1f s",
                time.monotonic() - self._down_since,
            )
            self._up = True
            metrics.CACHE_UP.labels(self.backend).set(1)


def _reason(exc: BaseException) -> str:
    """The error's kind, never its text: redis-py's messages name the host and port. A server
    reply (e.g. OOM) is safe to show and is what an operator needs."""
    if isinstance(exc, ResponseError):
        return str(exc)[:120]
    text = str(exc)
    if tls.is_tls_failure(exc) and "[SSL" in text:
        return "TLS handshake failed: " + text[text.index("[SSL") :][:200]
    return type(exc).__name__


def create_cache(settings: CacheSettings) -> EmbeddingCache:
    if settings.redis_url:
        return RedisEmbeddingCache(
            settings.redis_url,
            ttl_seconds=settings.ttl_seconds,
            timeout_seconds=settings.timeout_seconds,
            ca_file=settings.ca_file,
        )
    return MemoryEmbeddingCache(settings.memory_max_bytes)
