"""create_app(settings) -> Litestar. The lifespan opens the components (appliance.components,
the composition root) once per process and closes them on shutdown (including the embedded
Postgres), and runs the process's background work: pool gauges, the reconciliation at start,
and the patient-data retention when it is on (appliance.retention)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig

from appliance.admin import admin_router
from appliance.api.access import Access
from appliance.api.dependencies import DEPENDENCIES
from appliance.api.docs import OfflineSwaggerUI, swagger_static
from appliance.api.errors import MULTIPART_PART_LIMIT, exception_handlers
from appliance.api.headers import security_headers
from appliance.api.health import HealthController
from appliance.api.identification import IdentificationController
from appliance.api.implants import ImplantController
from appliance.api.intake import IntakeController
from appliance.api.observability import instrument
from appliance.api.openapi import COMPONENTS as OPENAPI_COMPONENTS
from appliance.api.results import ResultsController
from appliance.components import Components, open_components
from appliance.doctor import reconcile
from appliance.logs import keep_secrets_out_of_logs
from appliance.metrics import forget_this_process
from appliance.retention import retention_forever
from appliance.scrape import sample_pool_forever
from appliance.settings import Settings

# Room for the multipart envelope and the text fields around the largest accepted image.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


log = logging.getLogger(__name__)


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("doctor at start failed: %s", type(task.exception()).__name__)


def create_app(settings: Settings, components: Components | None = None) -> Litestar:
    """`components`: already opened by the caller (a test), who also closes them."""
    keep_secrets_out_of_logs()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if components is not None:  # owned by the caller, already in state
            yield
            return
        async with open_components(settings) as built:
            built.load_identification()  # a refused model stops the server here
            await built.cache.check_at_start()  # and so does a Redis whose TLS fails
            app.state.components = built
            sampler = asyncio.create_task(sample_pool_forever(built.database.pool))
            # Reconcile files and rows in the background: a large image folder must not
            # delay the start (appliance.doctor).
            doctor = asyncio.create_task(reconcile(built.database.pool, built.store))
            doctor.add_done_callback(_log_failure)
            background = [sampler]
            if settings.retention.enabled:  # once an hour among all processes that run it
                days = settings.retention.days
                background.append(asyncio.create_task(retention_forever(built.retention, days)))
            try:
                yield
            finally:
                doctor.cancel()
                for task in background:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
        forget_this_process()

    app = Litestar(
        route_handlers=[
            IdentificationController,
            ImplantController,
            HealthController,
            IntakeController,
            ResultsController,
            swagger_static(),
            admin_router(),
        ],
        before_send=[security_headers],
        dependencies=DEPENDENCIES,
        exception_handlers=exception_handlers(),
        lifespan=[lifespan],
        state=State(
            {"access": Access.from_settings(settings)}
            | ({"components": components} if components else {})
        ),
        request_max_body_size=settings.limits.max_bytes + MULTIPART_OVERHEAD_BYTES,
        logging_config=None,  # appliance.logs configures logging (JSON), not Litestar
        multipart_form_part_limit=MULTIPART_PART_LIMIT,
        openapi_config=OpenAPIConfig(
            title="Raiox appliance",
            version="0.1.0",
            description="Identifies the dental implant in a radiograph (CLIP ViT-B/32 int8).",
            path="/docs",
            render_plugins=[OfflineSwaggerUI()],
            components=OPENAPI_COMPONENTS,
        ),
    )
    return instrument(app)
