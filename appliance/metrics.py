"""Prometheus metrics, one registry for the process.

Names follow Prometheus conventions (raiox_ prefix, base units, _total counters); labels are
always from small fixed sets, never hashes, emails or ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

STAGE_SECONDS = Histogram(
    "raiox_stage_duration_seconds",
    "Time spent per identification stage.",
    # cache, decode (form deliveries), encode (with preprocessing, and decoding for uploads),
    # search, store, record
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
IDENTIFICATIONS = Counter(
    "raiox_identifications_total",
    "Identifications by source and outcome.",
    ["source", "outcome"],  # source: upload/jotform/webhook/cli; outcome: ok/error
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "raiox_embedding_cache_lookups_total",
    "Embedding cache lookups by result.",
    ["backend", "result"],  # backend: redis/memory; result: hit/miss/error
    registry=REGISTRY,
)
CACHE_UP = Gauge(
    "raiox_embedding_cache_up",
    "1 when the embedding cache backend answers, 0 while it is unreachable.",
    ["backend"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "raiox_encoder_batch_size",
    "Images per ONNX Runtime call (micro-batching).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
    registry=REGISTRY,
)
REJECTED = Counter(
    "raiox_encoder_rejected_total",
    "Requests refused with 503 because the encoder queue was full or did not clear in time.",
    registry=REGISTRY,
)
CONFIRMATIONS = Counter(
    "raiox_confirmations_total",
    "Confirmed implants by where the appliance had ranked them: top-1 agreement is "
    'rank="1" over all, top-3 is rank 1-3 over all.',
    ["rank", "by"],  # rank: 1/2/3/none; by: dentist/staff
    registry=REGISTRY,
)
