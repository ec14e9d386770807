"""The replication worker's metrics (`raiox sync`), served on their own port.

The worker is one process, so it has a registry of its own with the usual process and Python
collectors; the api's multiprocess files are not involved. The backlog gauges are read from the
outbox after every pass: the outbox, not this process, is the truth, so they stay right when
several workers share it.
"""

from __future__ import annotations

import time
from threading import Thread
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    start_http_server,
)

from appliance.metrics import RETENTION_METRICS
from appliance.sync.outbox import Outbox

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

BACKLOG = Gauge(
    "raiox_replication_backlog_items",
    "Outbox rows waiting to be replicated.",
    registry=REGISTRY,
)
OLDEST_AGE = Gauge(
    "raiox_replication_oldest_pending_age_seconds",
    "Age of the oldest waiting outbox row (0 when none).",
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "raiox_replication_dead_letters",
    "Outbox rows that used up their attempts (raiox sync requeue).",
    registry=REGISTRY,
)
UPLOADS = Counter(
    "raiox_replication_uploads_total",
    "Objects confirmed in Spaces.",
    registry=REGISTRY,
)
UPLOADED_BYTES = Counter(
    "raiox_replication_uploaded_bytes_total",
    "Bytes of the objects confirmed in Spaces.",
    registry=REGISTRY,
)
FAILURES = Counter(
    "raiox_replication_failures_total",
    "Failed replication attempts: item (the item's fault) or unavailable (Spaces unreachable).",
    ["kind"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "raiox_replication_dead_lettered_total",
    "Outbox rows this worker moved to the dead letters.",
    registry=REGISTRY,
)
LAST_PASS = Gauge(
    "raiox_replication_last_pass_timestamp_seconds",
    "When this worker last finished a pass.",
    registry=REGISTRY,
)
# The retention runs in this worker too (appliance.retention): its metrics are the api's.
for _metric in RETENTION_METRICS:
    REGISTRY.register(_metric)
for _kind in ("item", "unavailable"):
    FAILURES.labels(_kind)  # exported as 0 from the start, so rate() has a series


async def refresh(outbox: Outbox) -> None:
    status = await outbox.status()
    BACKLOG.set(status.pending)
    OLDEST_AGE.set(status.oldest_pending_age_seconds or 0.0)
    DEAD_LETTERS.set(len(status.dead))
    LAST_PASS.set(time.time())


def serve(host: str, port: int) -> tuple[Any, Thread]:
    """GET /metrics on host:port in a daemon thread; shut it down with `.shutdown()`."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server, thread
