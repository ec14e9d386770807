"""Prometheus metrics: the names, types, labels and buckets monitoring/METRICS.md lists.

Names follow Prometheus conventions (raiox_ prefix, base units, _total counters); labels are
always from small fixed sets, never hashes, emails or ids.

With several uvicorn workers each process counts on its own, so a scrape would see one worker
at random: when PROMETHEUS_MULTIPROC_DIR is set (before prometheus_client is imported; `raiox
serve` sets it for more than one worker) every process writes its values to files there and
`exposition()` merges them. Each gauge says how workers combine (`multiprocess_mode`).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# From 0.5 ms: a cache lookup or an HNSW search takes 1-3 ms, the int8 model 20-30 ms.
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# --- HTTP (appliance.api.observability) ---
HTTP_REQUESTS = Counter(
    "raiox_http_requests_total",
    "Answered HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "raiox_http_request_duration_seconds",
    "Time from the request to the response's last byte.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)

# --- identification ---
STAGE_SECONDS = Histogram(
    "raiox_stage_duration_seconds",
    "Time per identification stage: cache, decode, preprocess, queue, encode, search, store, "
    "record.",
    ["stage"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
IDENTIFICATIONS = Counter(
    "raiox_identifications_total",
    "Identifications by source (upload, jotform, webhook, cli) and outcome (ok, invalid, error).",
    ["source", "outcome"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "raiox_encoder_queue_depth",
    "Requests admitted to the encoder and not yet answered.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "raiox_encoder_batch_size",
    "Images per ONNX Runtime call (micro-batching).",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
REJECTED = Counter(
    "raiox_encoder_rejected_total",
    "Requests refused with 503: queue_full at admission, timeout waiting for the encoder.",
    ["reason"],
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "raiox_embedding_cache_lookups_total",
    "Embedding cache lookups by backend (redis, memory) and result (hit, miss, error).",
    ["backend", "result"],
    registry=REGISTRY,
)
CACHE_UP = Gauge(
    "raiox_embedding_cache_up",
    "1 when the embedding cache backend answers, 0 while it is unreachable.",
    ["backend"],
    multiprocess_mode="livemin",
    registry=REGISTRY,
)

# --- state read at scrape time (appliance.api.health) ---
CATALOG_IMPLANTS = Gauge(
    "raiox_catalog_implants",
    "Implants in the catalog.",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
CATALOG_REFERENCES = Gauge(
    "raiox_catalog_reference_images",
    "Reference images in the catalog.",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "raiox_model_info",
    "The serving model (always 1): model id, whether its weights are pretrained, app version.",
    ["model_id", "pretrained", "version"],
    multiprocess_mode="max",
    registry=REGISTRY,
)
DB_POOL = Gauge(
    "raiox_db_pool_connections",
    "Database pool connections by state (in_use, idle).",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_POOL_MAX = Gauge(
    "raiox_db_pool_max_connections",
    "The database pools' bound.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
CONFIRMATIONS = Counter(
    "raiox_confirmations_total",
    "Confirmed implants by where the appliance had ranked them: top-1 agreement is "
    'rank="1" over all, top-3 is rank 1-3 over all.',
    ["rank", "by"],  # rank: 1/2/3/none; by: dentist/staff
    registry=REGISTRY,
)
# --- patient-data retention (appliance.retention; the sync worker exports them too) ---
RETENTION_SUBMISSIONS = Counter(
    "raiox_retention_erased_submissions_total",
    "Submissions whose personal data the retention erased.",
    registry=REGISTRY,
)
RETENTION_IMAGES = Counter(
    "raiox_retention_erased_images_total",
    "Images of those submissions erased (local file and Spaces copy, unless shared).",
    registry=REGISTRY,
)
RETENTION_LAST_RUN = Gauge(
    "raiox_retention_last_run_timestamp_seconds",
    "When a retention run last finished, by any process (0: never, or retention off).",
    multiprocess_mode="max",
    registry=REGISTRY,
)
RETENTION_METRICS = (RETENTION_SUBMISSIONS, RETENTION_IMAGES, RETENTION_LAST_RUN)
# raiox_backup_last_success_timestamp_seconds: appliance.backup.status, read from latest.json
# at scrape time and appended to /metrics.

# Every series of a fixed label set exists from the start at 0, so rate() and alerts see a
# counter's first increase and a scrape lists the metric before anything happened.
for _source in ("upload", "jotform", "webhook", "cli"):
    for _outcome in ("ok", "invalid", "error"):
        IDENTIFICATIONS.labels(_source, _outcome)
for _reason in ("queue_full", "timeout"):
    REJECTED.labels(_reason)
for _backend in ("redis", "memory"):
    for _result in ("hit", "miss", "error"):
        CACHE_LOOKUPS.labels(_backend, _result)
for _rank in ("1", "2", "3", "none"):
    for _by in ("dentist", "staff"):
        CONFIRMATIONS.labels(_rank, _by)


def app_version() -> str:
    try:
        return version("raiox-appliance")
    except PackageNotFoundError:
        return "unknown"


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def exposition() -> bytes:
    """The text format of every metric of this appliance, merged over its worker processes."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return generate_latest(merged)


def forget_this_process() -> None:
    """A worker shutting down: its live gauges (queue depth, pool, cache state) stop counting."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
