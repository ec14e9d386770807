"""The embedding caches against a real redis-server, including an outage mid-test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from appliance import metrics
from appliance.cache import MemoryEmbeddingCache, RedisEmbeddingCache, cache_key
from appliance.components import Components
from appliance.demo_catalog import DEMO_IMPLANTS, png_bytes, render_patient_sample
from tests.fixtures.appliance import asgi_client, rewired
from tests.fixtures.redis import RedisServer


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return v / np.linalg.norm(v)


def gauge(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return float(value or 0.0)


@pytest.fixture
async def redis_cache(redis_server: RedisServer) -> AsyncIterator[RedisEmbeddingCache]:
    cache = RedisEmbeddingCache(redis_server.url, ttl_seconds=600, timeout_seconds=0.05)
    yield cache
    redis_server.ensure_running()
    await cache.close()


async def test_redis_roundtrip_ttl_and_model_separation(
    redis_cache: RedisEmbeddingCache, redis_server: RedisServer
) -> None:
    v = vector(1)
    await redis_cache.put("model-a", "abc", v)
    got = await redis_cache.get("model-a", "abc")
    assert got is not None and got.dtype == np.float32 and np.array_equal(got, v)
    assert await redis_cache.get("model-b", "abc") is None
    import redis

    raw = redis.Redis.from_url(redis_server.url)
    ttl = raw.ttl(cache_key("model-a", "abc"))
    assert 0 < ttl <= 600
    raw.set(cache_key("model-a", "bad"), b"123")  # not a float32 vector
    assert await redis_cache.get("model-a", "bad") is None
    assert (await redis_cache.health()).ok


async def test_redis_outage_degrades_then_recovers(
    redis_cache: RedisEmbeddingCache, redis_server: RedisServer
) -> None:
    await redis_cache.put("m", "k", vector(2))
    redis_server.stop()
    errors_before = gauge("raiox_embedding_cache_lookups_total", backend="redis", result="error")
    start = time.monotonic()
    for _ in range(200):
        assert await redis_cache.get("m", "k") is None
        await redis_cache.put("m", "k2", vector(3))
    assert time.monotonic() - start < 1.0, "a dead Redis must not cost a timeout per request"
    health = await redis_cache.health()
    assert not health.ok and "127.0.0.1" not in health.detail
    assert gauge("raiox_embedding_cache_up", backend="redis") == 0
    errors = gauge("raiox_embedding_cache_lookups_total", backend="redis", result="error")
    assert errors >= errors_before + 200
    redis_server.start()
    deadline = time.monotonic() + 20
    while await redis_cache.get("m", "k") is None:  # after the backoff it reconnects by itself
        assert time.monotonic() < deadline, "the cache never came back"
        await redis_cache.put("m", "k", vector(2))
        await asyncio.sleep(0.2)
    assert gauge("raiox_embedding_cache_up", backend="redis") == 1


async def test_memory_cache_is_bounded_lru_and_returns_copies() -> None:
    cache = MemoryEmbeddingCache(max_bytes=5 * (512 * 4 + 200))
    for n in range(8):
        await cache.put("m", str(n), vector(n))
    assert await cache.get("m", "0") is None  # evicted
    first = await cache.get("m", "7")
    assert first is not None
    first[:] = 0
    again = await cache.get("m", "7")
    assert again is not None and np.array_equal(again, vector(7))
    assert (await cache.health()).ok


async def test_cached_image_skips_the_model_and_survives_redis_outage(
    demo_components: Components, redis_server: RedisServer
) -> None:
    cache = RedisEmbeddingCache(redis_server.url, ttl_seconds=600, timeout_seconds=0.05)
    comps = rewired(demo_components, cache=cache)
    data = png_bytes(render_patient_sample(DEMO_IMPLANTS[12], seed=99))
    other = png_bytes(render_patient_sample(DEMO_IMPLANTS[13], seed=98))

    async def post(client: httpx.AsyncClient, payload: bytes) -> dict[str, object]:
        response = await client.post("/upload", files={"file": ("x.png", payload)})
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    try:
        async with asgi_client(comps) as client:
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
                before = comps.batching.calls
                await post(client, data)
                if comps.batching.calls == before:
                    break
                assert time.monotonic() < deadline, "the cache was never used again"
                await asyncio.sleep(0.5)
    finally:
        redis_server.ensure_running()
        await cache.close()
