"""Gauges of state the appliance does not change itself (catalog size, the model, the pool, the
last retention run by any process): read when Prometheus scrapes, so they are exact then and
cost nothing between scrapes."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from appliance import metrics
from appliance.components import Components

log = logging.getLogger(__name__)

POOL_SAMPLE_SECONDS = 5.0


async def refresh(components: Components) -> None:
    encoder = components.encoder
    pretrained = "true" if encoder.pretrained else "false"
    metrics.MODEL_INFO.labels(encoder.model_id, pretrained, metrics.app_version()).set(1)
    observe_pool(components.database.pool)
    try:
        stats = await components.catalog.stats()
        await components.retention.refresh_metrics()  # whichever process ran it last
    except Exception as exc:  # the database being down must not take /metrics down with it
        log.warning("catalog size unavailable for metrics: %s", type(exc).__name__)
        return
    metrics.CATALOG_IMPLANTS.set(stats.implants)
    metrics.CATALOG_REFERENCES.set(stats.references)


def observe_pool(pool: asyncpg.Pool) -> None:
    size, idle = pool.get_size(), pool.get_idle_size()
    metrics.DB_POOL.labels("in_use").set(size - idle)
    metrics.DB_POOL.labels("idle").set(idle)
    metrics.DB_POOL_MAX.set(pool.get_max_size())


async def sample_pool_forever(pool: asyncpg.Pool) -> None:
    """Every worker keeps its own pool's gauges fresh; a scrape reaches only one worker."""
    while True:
        with contextlib.suppress(Exception):
            observe_pool(pool)
        await asyncio.sleep(POOL_SAMPLE_SECONDS)
