"""GET /healthcheck (per-component status for people and load balancers) and GET /metrics."""

from __future__ import annotations

import shutil

import msgspec
from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST

from appliance import draining, scrape
from appliance.backup.status import backup_metrics
from appliance.components import Components
from appliance.metrics import exposition


class ComponentOut(msgspec.Struct):
    status: str  # ok | degraded | down | off
    detail: str


class HealthOut(msgspec.Struct):
    status: str
    model: dict[str, str | bool]
    components: dict[str, ComponentOut]


class HealthController(Controller):
    tags = ["operations"]

    @get(
        "/healthcheck",
        summary=(
            "Per-component status; 200 while the appliance can identify, else 503 (also while "
            "a stopping server drains)"
        ),
        responses={503: ResponseSpec(HealthOut, description="The appliance cannot identify")},
    )
    async def healthcheck(self, components: Components) -> Response[HealthOut]:
        parts = {
            "database": await _database(components),
            "model": _model(components),
            "cache": await _cache(components),
            "storage": await _storage(components),
        }
        down = any(p.status == "down" for p in parts.values())
        degraded = any(p.status == "degraded" for p in parts.values())
        status = "down" if down else "degraded" if degraded else "ok"
        if draining.is_draining():  # stopping: the load balancer must send elsewhere
            down, status = True, "draining"
        body = HealthOut(
            status=status,
            model={
                "id": components.encoder.model_id,
                "pretrained": components.encoder.pretrained,
                "graph": components.encoder.graph,
                "execution_provider": components.encoder.execution_provider,
            },
            components=parts,
        )
        return Response(body, status_code=503 if down else 200)

    @get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, components: Components) -> bytes:
        await scrape.refresh(components)
        return exposition() + backup_metrics(components.settings.backups_dir)


async def _database(components: Components) -> ComponentOut:
    problem = await components.database.ping()
    if problem:
        return ComponentOut("down", problem)
    try:
        stats = await components.catalog.stats()
    except Exception as exc:  # the ping passed; a failing query is still "down" for health
        return ComponentOut("down", f"catalog query failed ({type(exc).__name__})")
    if not stats.references:
        return ComponentOut("degraded", "connected; the catalog is empty (raiox catalog import)")
    mismatched = [m for m in stats.references_by_model if m != components.encoder.model_id]
    if mismatched:
        return ComponentOut("degraded", "catalog made by another model: run raiox catalog reembed")
    return ComponentOut(
        "ok", f"connected; {stats.implants} implants, {stats.references} reference images"
    )


def _model(components: Components) -> ComponentOut:
    encoder = components.encoder
    runs_on = f"{encoder.graph} on {encoder.execution_provider.upper()}"
    if encoder.execution_provider != encoder.requested_provider:
        return ComponentOut(
            "degraded",
            f"loaded; {runs_on}: RAIOX_EXECUTION_PROVIDER={encoder.requested_provider} is not "
            "available to onnxruntime (slow, same answers)",
        )
    if not encoder.pretrained:
        return ComponentOut("ok", f"loaded; {runs_on}; UNTRAINED random weights (demo/test only)")
    return ComponentOut("ok", f"loaded; {encoder.manifest.architecture} {runs_on}")


async def _cache(components: Components) -> ComponentOut:
    health = await components.cache.health()
    return ComponentOut("ok" if health.ok else "degraded", f"{health.backend}: {health.detail}")


async def _storage(components: Components) -> ComponentOut:
    root = components.store.root
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return ComponentOut("down", "local image folder is missing")
    replication = "off (no Spaces credentials)"
    if components.settings.spaces.enabled:
        try:
            sync = await components.outbox.status()
        except Exception:  # the database part of health reports why
            return ComponentOut("degraded", "replication status unavailable")
        replication = f"on, {sync.pending} pending, {len(sync.dead)} dead letters"
        if sync.dead:
            return ComponentOut("degraded", f"replication {replication} (raiox sync status)")
    threshold = components.settings.access.min_free_disk_bytes
    if threshold and free < threshold:
        return ComponentOut(
            "down",
            f"disk full: {free // 2**20} MiB free, below RAIOX_MIN_FREE_DISK_BYTES; new images "
            f"are refused (507); replication {replication}",
        )
    if free < 2 * threshold:
        return ComponentOut(
            "degraded", f"low disk: {free // 2**20} MiB free; replication {replication}"
        )
    return ComponentOut("ok", f"{free // 2**30} GiB free; replication {replication}")
