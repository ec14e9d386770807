"""The console's front page (identifications, failures, latency, cache, replication, catalog,
model and accuracy) and the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from litestar import Controller, Response, get, post
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Redirect

from appliance import audit, metrics
from appliance.accounts import StaffSession
from appliance.accuracy import confirmed_scores
from appliance.admin.auth import AnyRequest, checked_form, require_admin, staff_session
from appliance.admin.views import page, see_other
from appliance.components import Components

DAYS = 14


@dataclass(frozen=True)
class Activity:
    day: str
    by_source: dict[str, int]
    failed: int


class DashboardController(Controller):
    path = "/admin"
    tags = ["admin"]
    include_in_schema = False
    dependencies = {"session": Provide(staff_session)}

    @get("/")
    async def dashboard(
        self, session: StaffSession, components: Components, base_url: str
    ) -> Response[str]:
        pool = components.database.pool
        stats = await components.catalog.stats(fresh=True)
        return page(
            "dashboard.html",
            session,
            base_url=base_url,
            activity=await _activity(pool),
            totals=await pool.fetchrow(_TOTALS),
            catalog=stats,
            model={"id": components.encoder.model_id, "pretrained": components.encoder.pretrained},
            accuracy=await confirmed_scores(pool),
            backlog=await components.outbox.status(),
            replication_on=components.settings.spaces.enabled,
            erasures_pending=await components.erasure.pending(),
            stages=_stage_means(),
            cache=_cache_hit_ratio(),
        )

    @get("/audit")
    async def audit_log(
        self,
        session: StaffSession,
        components: Components,
        base_url: str,
        offset: Annotated[int, Parameter(ge=0)] = 0,
    ) -> Response[str]:
        require_admin(session)
        entries = await audit.recent(components.database.pool, limit=100, offset=offset)
        return page("audit.html", session, base_url=base_url, entries=entries, offset=offset)

    @post("/erasures/retry")
    async def retry_erasures(
        self, request: AnyRequest, session: StaffSession, components: Components, base_url: str
    ) -> Redirect:
        await checked_form(request, session)
        require_admin(session)
        await components.erasure.retry_remote()
        return see_other(f"{base_url}/admin")


async def _activity(pool: asyncpg.Pool) -> list[Activity]:
    rows = await pool.fetch(_ACTIVITY, DAYS)
    days: dict[str, Activity] = {}
    for r in rows:
        day = r["day"].strftime("%d/%m")
        entry = days.setdefault(day, Activity(day, {}, 0))
        entry.by_source[r["source"]] = r["n"]
        days[day] = Activity(day, entry.by_source, entry.failed + r["failed"])
    return list(days.values())


def _stage_means() -> dict[str, float]:
    """Mean seconds per identification stage in this process, from the metrics it exports."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in metrics.STAGE_SECONDS.collect():
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if sample.name.endswith("_sum"):
                sums[stage] = sample.value
            elif sample.name.endswith("_count"):
                counts[stage] = sample.value
    return {stage: sums[stage] / n for stage, n in counts.items() if n and stage in sums}


def _cache_hit_ratio() -> dict[str, Any]:
    by_result: dict[str, float] = {}
    for family in metrics.CACHE_LOOKUPS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                result = sample.labels.get("result", "")
                by_result[result] = by_result.get(result, 0.0) + sample.value
    lookups = sum(by_result.values())
    return {
        "lookups": int(lookups),
        "ratio": by_result.get("hit", 0.0) / lookups if lookups else None,
    }


_ACTIVITY = """
SELECT date_trunc('day', created_at AT TIME ZONE 'UTC') AS day, source, count(*) AS n,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM submissions WHERE created_at > now() - make_interval(days => $1)
GROUP BY 1, 2 ORDER BY 1 DESC, 2
"""

_TOTALS = """
SELECT count(*) AS submissions, count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status IN ('received', 'processing')) AS processing
FROM submissions
"""
