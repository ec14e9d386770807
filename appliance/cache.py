"""Embedding caches keyed by model id + sha256 of the image bytes: Redis in production, a
bounded in-process LRU in the embedded default. Both are best-effort: a cache failure never
fails a request, it only costs a model run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from appliance import metrics
from appliance.settings import Settings

log = logging.getLogger(__name__)
ENTRY_OVERHEAD_BYTES = 200
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 15.0


@dataclass(frozen=True)
class CacheHealth:
    backend: str
    ok: bool
    detail: str


class EmbeddingCache(Protocol):
    backend: str

    async def get(self, model_id: str, sha256: str) -> np.ndarray | None: ...
    async def put(self, model_id: str, sha256: str, vector: np.ndarray) -> None: ...
    async def health(self) -> CacheHealth: ...
    async def close(self) -> None: ...


def cache_key(model_id: str, sha256: str) -> str:
    return f"raiox:emb:v1:{model_id}:{sha256}"


class MemoryEmbeddingCache:
    backend = "memory"

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

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
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        value = np.array(vector, dtype=np.float32)
        self._entries[key] = value
        self._bytes += value.nbytes + ENTRY_OVERHEAD_BYTES
        while self._bytes > self._max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes + ENTRY_OVERHEAD_BYTES

    async def health(self) -> CacheHealth:
        return CacheHealth(
            self.backend,
            True,
            f"in-process, {len(self._entries)} entries, {self._bytes // 1024} KiB of "
            f"{self._max_bytes // 1024} KiB",
        )

    async def close(self) -> None:
        self._entries.clear()


class RedisEmbeddingCache:
    """After a failure Redis is skipped for a growing backoff, so a dead Redis costs one
    timeout now and then, not one per request; the client reconnects by itself."""

    backend = "redis"

    def __init__(self, url: str, *, ttl_seconds: int, timeout_seconds: float) -> None:
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
        )
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._down_until = 0.0
        self._backoff = BACKOFF_START_SECONDS
        self._up = True
        metrics.CACHE_UP.labels(self.backend).set(1)

    async def get(self, model_id: str, sha256: str) -> np.ndarray | None:
        if self._skipping():
            metrics.CACHE_LOOKUPS.labels(self.backend, "error").inc()
            return None
        key = cache_key(model_id, sha256)
        try:
            async with asyncio.timeout(self._timeout * 2):
                raw = await self._client.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            metrics.CACHE_LOOKUPS.labels(self.backend, "error").inc()
            return None
        self._recovered()
        if not isinstance(raw, bytes) or len(raw) % 4:
            metrics.CACHE_LOOKUPS.labels(self.backend, "miss").inc()
            return None
        metrics.CACHE_LOOKUPS.labels(self.backend, "hit").inc()
        return np.frombuffer(raw, dtype="<f4").copy()

    async def put(self, model_id: str, sha256: str, vector: np.ndarray) -> None:
        if self._skipping():
            return
        data = np.asarray(vector, dtype="<f4").tobytes()
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._client.set(cache_key(model_id, sha256), data, ex=self._ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return
        self._recovered()

    async def health(self) -> CacheHealth:
        try:
            async with asyncio.timeout(max(self._timeout * 4, 0.2)):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError):
            return CacheHealth(
                self.backend, False, "redis unreachable; embeddings are computed without the cache"
            )
        self._recovered()
        return CacheHealth(self.backend, True, "redis answering")

    async def close(self) -> None:
        await self._client.aclose()

    def _skipping(self) -> bool:
        return not self._up and time.monotonic() < self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self._up:
            log.warning(
                "embedding cache (redis) unreachable: %s; continuing without it", type(exc).__name__
            )
        else:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)
        self._up = False
        self._down_until = time.monotonic() + self._backoff
        metrics.CACHE_UP.labels(self.backend).set(0)

    def _recovered(self) -> None:
        if not self._up:
            log.info("embedding cache (redis) is back")
        self._up = True
        self._backoff = BACKOFF_START_SECONDS
        metrics.CACHE_UP.labels(self.backend).set(1)


def create_cache(settings: Settings) -> EmbeddingCache:
    if settings.redis_url:
        return RedisEmbeddingCache(
            settings.redis_url,
            ttl_seconds=settings.cache_ttl_seconds,
            timeout_seconds=settings.cache_timeout_seconds,
        )
    return MemoryEmbeddingCache(settings.cache_memory_max_bytes)
