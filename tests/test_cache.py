"""The embedding caches against a real redis-server, including a crash, a hang and a restart
mid-test, and the in-process LRU."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis

from appliance import metrics
from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.components import Components
from appliance.identification.cache import (
    ENTRY_OVERHEAD_BYTES,
    MemoryEmbeddingCache,
    RedisEmbeddingCache,
    cache_key,
    create_cache,
)
from appliance.settings import CacheSettings
from tests.fixtures.appliance import asgi_client, variant
from tests.fixtures.redis import RedisServer, free_port

TIMEOUT = 0.05
ENTRY = 512 * 4 + ENTRY_OVERHEAD_BYTES


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return v / np.linalg.norm(v)


def same(got: np.ndarray | None, expected: np.ndarray) -> bool:
    return got is not None and np.array_equal(got, expected)


def sample(name: str, **labels: str) -> float:
    return float(metrics.REGISTRY.get_sample_value(name, labels) or 0.0)


def lookups(backend: str, result: str) -> float:
    return sample("raiox_embedding_cache_lookups_total", backend=backend, result=result)


def redis_up() -> float:
    return sample("raiox_embedding_cache_up", backend="redis")


@pytest.fixture
async def redis_cache(redis_server: RedisServer) -> AsyncIterator[RedisEmbeddingCache]:
    cache = RedisEmbeddingCache(redis_server.url, ttl_seconds=600, timeout_seconds=TIMEOUT)
    yield cache
    redis_server.ensure_running()
    await cache.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def recover(cache: RedisEmbeddingCache, limit: float = 8.0) -> float:
    """Seconds until a put/get pair works again on the same cache object."""
    start = time.monotonic()
    while True:
        await cache.put("m", "back", vector(9))
        if await cache.get("m", "back") is not None:
            return time.monotonic() - start
        assert time.monotonic() - start < limit, "the cache never came back"
        await asyncio.sleep(0.1)


async def test_redis_roundtrip_stores_float32_with_ttl(
    redis_cache: RedisEmbeddingCache, raw: aioredis.Redis
) -> None:
    v = vector(1)
    hits, misses = lookups("redis", "hit"), lookups("redis", "miss")
    await redis_cache.put("model-a", "abc", v)
    got = await redis_cache.get("model-a", "abc")
    assert got is not None and got.dtype == np.float32 and np.array_equal(got, v)
    got[:] = 0  # a writable copy, not a view of the reply
    assert same(await redis_cache.get("model-a", "abc"), v)
    assert await raw.get("raiox:emb:v1:model-a:abc") == v.astype("<f4").tobytes()
    assert 0 < await raw.ttl(cache_key("model-a", "abc")) <= 600
    assert await redis_cache.get("model-b", "abc") is None  # same image, other model
    assert lookups("redis", "hit") == hits + 2
    assert lookups("redis", "miss") == misses + 1
    health = await redis_cache.health()
    assert health.ok and health.backend == "redis"


@pytest.mark.parametrize(
    "value",
    [b"123", b"", np.full(512, np.nan, dtype="<f4").tobytes()],
    ids=["torn", "empty", "nan"],
)
async def test_redis_corrupt_value_is_a_miss_and_deleted(
    redis_cache: RedisEmbeddingCache, raw: aioredis.Redis, value: bytes
) -> None:
    key = cache_key("model-a", "bad")
    await raw.set(key, value)
    misses = lookups("redis", "miss")
    assert await redis_cache.get("model-a", "bad") is None
    assert lookups("redis", "miss") == misses + 1
    assert await raw.exists(key) == 0


async def test_redis_crash_degrades_fast_then_recovers_on_the_same_object(
    redis_cache: RedisEmbeddingCache,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.identification.cache")
    await redis_cache.put("m", "k", vector(2))
    redis_server.stop()
    errors = lookups("redis", "error")
    slowest, start = 0.0, time.monotonic()
    for n in range(200):
        t = time.monotonic()
        assert await redis_cache.get("m", "k") is None
        await redis_cache.put("m", f"k{n}", vector(3))
        slowest = max(slowest, time.monotonic() - t)
    assert time.monotonic() - start < 0.5, "a dead Redis must not cost a timeout per request"
    assert slowest < 0.2
    assert lookups("redis", "error") == errors + 200
    assert redis_up() == 0
    health = await redis_cache.health()
    assert not health.ok and "unreachable" in health.detail
    assert str(redis_server.port) not in health.detail

    redis_server.start()
    assert await recover(redis_cache) < 6.0  # the backoff, not a reconnect by hand
    assert redis_up() == 1
    messages = [
        r.getMessage() for r in caplog.records if r.name == "appliance.identification.cache"
    ]
    assert len([m for m in messages if "unreachable" in m]) == 1, messages  # once per outage
    assert len([m for m in messages if "reachable again" in m]) == 1, messages
    assert not any(str(redis_server.port) in m for m in messages)


async def test_hung_redis_costs_one_timeout_not_one_per_request(
    redis_cache: RedisEmbeddingCache, redis_server: RedisServer
) -> None:
    await redis_cache.put("m", "k", vector(4))
    redis_server.pause()
    try:
        t = time.monotonic()
        assert await redis_cache.get("m", "k") is None
        first = time.monotonic() - t
        assert first < 0.5  # socket_timeout (50 ms) under a hard 150 ms ceiling
        t = time.monotonic()
        for _ in range(200):
            assert await redis_cache.get("m", "k") is None
            await redis_cache.put("m", "k", vector(4))
        assert time.monotonic() - t < 0.5
        t = time.monotonic()
        assert not (await redis_cache.health()).ok
        assert time.monotonic() - t < 0.5
        assert redis_up() == 0
    finally:
        redis_server.resume()
    await recover(redis_cache)
    assert redis_up() == 1


async def test_redis_restart_between_requests_is_invisible(
    redis_cache: RedisEmbeddingCache, redis_server: RedisServer
) -> None:
    """The pooled connection dies with the server; redis-py's one retry opens a new one."""
    await redis_cache.put("m", "k", vector(5))
    errors = lookups("redis", "error")
    redis_server.stop()
    redis_server.start()
    assert await redis_cache.get("m", "k") is None  # no persistence: a plain miss
    assert lookups("redis", "error") == errors
    assert redis_up() == 1
    await redis_cache.put("m", "k", vector(5))
    assert same(await redis_cache.get("m", "k"), vector(5))


async def test_redis_credentials_never_reach_logs_or_health(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.identification.cache")
    port = free_port()  # nothing listens there
    url = f"redis://raiox:s3cret-pass@127.0.0.1:{port}/0"
    cache = RedisEmbeddingCache(url, ttl_seconds=60, timeout_seconds=TIMEOUT)
    try:
        assert await cache.get("m", "k") is None
        await cache.put("m", "k", vector(6))
        health = await cache.health()
    finally:
        await cache.close()
    assert not health.ok
    assert redis_up() == 0
    text = health.detail + "\n".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in text
    assert "s3cret" not in text and "raiox:" not in text and str(port) not in text


async def test_memory_cache_is_a_byte_bounded_lru() -> None:
    cache = MemoryEmbeddingCache(max_bytes=5 * ENTRY)
    for n in range(5):
        await cache.put("m", str(n), vector(n))
    assert await cache.get("m", "0") is not None  # now the most recently used
    for n in range(5, 8):
        await cache.put("m", str(n), vector(n))
        assert cache.bytes_used <= 5 * ENTRY
    assert await cache.get("m", "0") is not None
    assert [await cache.get("m", str(n)) is None for n in range(1, 8)] == [True] * 3 + [False] * 4
    await cache.put("m", "7", vector(70))  # replacing an entry does not count it twice
    assert cache.bytes_used == 5 * ENTRY
    assert same(await cache.get("m", "7"), vector(70))
    assert "5 entries" in (await cache.health()).detail

    await cache.put("m", "big", np.zeros(4096, dtype=np.float32))  # larger than the bound
    assert await cache.get("m", "big") is None
    assert cache.bytes_used == 5 * ENTRY  # and it evicted nothing


async def test_memory_cache_hands_out_copies_and_counts() -> None:
    cache = MemoryEmbeddingCache(max_bytes=10 * ENTRY)
    hits, misses = lookups("memory", "hit"), lookups("memory", "miss")
    v = vector(1)
    await cache.put("m", "k", v)
    v[:] = 0  # the caller reuses its array
    first = await cache.get("m", "k")
    assert first is not None and first.dtype == np.float32
    first[:] = 0  # the caller scribbles on the result
    assert same(await cache.get("m", "k"), vector(1))
    assert await cache.get("other-model", "k") is None
    assert lookups("memory", "hit") == hits + 2
    assert lookups("memory", "miss") == misses + 1


async def test_memory_cache_stays_consistent_under_concurrent_tasks() -> None:
    cache = MemoryEmbeddingCache(max_bytes=20 * ENTRY)

    async def worker(n: int) -> None:
        for i in range(50):
            await cache.put("m", str((n * 7 + i) % 40), vector(i))
            await cache.get("m", str(i % 40))

    await asyncio.gather(*(worker(n) for n in range(8)))
    assert cache.bytes_used == 20 * ENTRY
    assert "20 entries" in (await cache.health()).detail


async def test_create_cache_follows_settings(redis_server: RedisServer) -> None:
    memory = create_cache(CacheSettings(memory_max_bytes=ENTRY))
    redis_backed = create_cache(CacheSettings(redis_url=redis_server.url))
    try:
        assert isinstance(memory, MemoryEmbeddingCache) and memory.backend == "memory"
        assert isinstance(redis_backed, RedisEmbeddingCache)
        assert (await redis_backed.health()).ok
    finally:
        await memory.close()
        await redis_backed.close()


async def test_cached_image_skips_the_model_and_survives_redis_outage(
    demo_components: Components, redis_server: RedisServer
) -> None:
    cache = CacheSettings(redis_url=redis_server.url, ttl_seconds=600, timeout_seconds=TIMEOUT)
    data = png_bytes(render_patient_sample(DEMO_IMPLANTS[12], seed=99))
    other = png_bytes(render_patient_sample(DEMO_IMPLANTS[13], seed=98))

    async def post(client: httpx.AsyncClient, payload: bytes) -> dict[str, object]:
        response = await client.post("/upload", files={"file": ("x.png", payload)})
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    try:
        async with variant(demo_components, cache=cache) as comps, asgi_client(comps) as client:
            assert isinstance(comps.cache, RedisEmbeddingCache), "wired from settings"
            first = await post(client, data)
            calls = comps.batching.calls
            second = await post(client, data)
            assert comps.batching.calls == calls, "a cached image must not run the model"
            assert second["matches"] == first["matches"]

            redis_server.stop()
            await post(client, other)  # still answers, through the model
            assert comps.batching.calls == calls + 1
            health = (await client.get("/healthcheck")).json()
            assert health["components"]["cache"]["status"] == "degraded"

            redis_server.start()
            deadline = time.monotonic() + 20
            while True:  # once Redis is back, the cache is used again
                await post(client, data)  # stores it (Redis lost it in the crash)
                before = comps.batching.calls
                await post(client, data)
                if comps.batching.calls == before:
                    break
                assert time.monotonic() < deadline, "the cache was never used again"
                await asyncio.sleep(0.5)
    finally:
        redis_server.ensure_running()
