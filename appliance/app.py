"""create_app(settings) -> Litestar. The lifespan opens the components (appliance.components,
the composition root) once per process and closes them on shutdown (including the embedded
Postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from appliance.api.dependencies import DEPENDENCIES
from appliance.api.errors import exception_handlers
from appliance.api.health import HealthController
from appliance.api.identification import IdentificationController
from appliance.api.implants import ImplantController
from appliance.api.intake import IntakeController
from appliance.api.observability import instrument
from appliance.api.results import ResultsController
from appliance.components import Components, open_components
from appliance.logs import keep_secrets_out_of_logs
from appliance.metrics import forget_this_process
from appliance.scrape import sample_pool_forever
from appliance.settings import Settings

# Room for the multipart envelope and the text fields around the largest accepted image.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


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
            app.state.components = built
            sampler = asyncio.create_task(sample_pool_forever(built.database.pool))
            try:
                yield
            finally:
                sampler.cancel()
                with suppress(asyncio.CancelledError):
                    await sampler
        forget_this_process()

    app = Litestar(
        route_handlers=[
            IdentificationController,
            ImplantController,
            HealthController,
            IntakeController,
            ResultsController,
        ],
        dependencies=DEPENDENCIES,
        exception_handlers=exception_handlers(),
        lifespan=[lifespan],
        state=State({"components": components} if components else {}),
        request_max_body_size=settings.limits.max_bytes + MULTIPART_OVERHEAD_BYTES,
        logging_config=None,  # appliance.logs configures logging (JSON), not Litestar
        openapi_config=OpenAPIConfig(
            title="Raiox appliance",
            version="0.1.0",
            description="Identifies the dental implant in a radiograph (CLIP ViT-B/32 int8).",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
    )
    return instrument(app)
