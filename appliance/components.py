"""THE composition root: every part of the appliance is built here from Settings, for the HTTP
app, every CLI command and the tests alike, so all of them run the same code against the same
adapters. Optional parts are wired from settings or explicitly absent: Spaces (`spaces` is None
without RAIOX_SPACES_*), Redis (the in-process cache without RAIOX_REDIS_URL), the Jotform API
(`intake.jotform_api` is None unless submissions are verified).

The parts that need the model (encoder, batching, cache, embedder, identifier, intake) are
built on first use: `raiox sync status` never loads ONNX Runtime, and an untrained model stops
only what would identify with it. The app builds them at start (`load_identification`).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.accounts import Accounts
from appliance.apikeys import ApiKeys
from appliance.catalog.bulk_import import BulkImport
from appliance.catalog.curation import Curation
from appliance.catalog.importer import ImportReport, ReferenceSpec, import_catalog
from appliance.catalog.repository import Catalog
from appliance.database import Database
from appliance.erasure import Erasure
from appliance.errors import AppError
from appliance.feedback import Feedback
from appliance.progress import Progress
from appliance.retention import Retention
from appliance.settings import Settings
from appliance.storage import ImageReader, LocalImageStore
from appliance.submissions import SubmissionRepository
from appliance.sync.outbox import Outbox

if TYPE_CHECKING:  # the model's stack and boto3 load only when built
    from appliance.identification.batching import BatchingEncoder
    from appliance.identification.cache import EmbeddingCache
    from appliance.identification.encoder import Encoder
    from appliance.identification.identify import Embedder, Identifier
    from appliance.intake.deliveries import Intake
    from appliance.sync.spaces import SpacesClient

log = logging.getLogger(__name__)


class UntrainedModelError(AppError):
    status_code = 503
    code = "untrained_model"


class Components:
    """Every part of one appliance process. Build with `open_components` (or
    `build_components` + `close`)."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        encoder: Encoder | None = None,
    ) -> None:
        """`encoder`: an already loaded model to share (tests build variants around one)."""
        self.settings = settings
        self.database = database
        self.store = LocalImageStore(settings.images_dir)
        self.catalog = Catalog(database.pool, hnsw_threshold=settings.catalog.hnsw_threshold)
        self.submissions = SubmissionRepository(database.pool)
        self.outbox = Outbox(database.pool)
        self.spaces = _spaces_client(settings)
        self.images = ImageReader(self.store, self.spaces, settings.spaces.presign_seconds)
        if encoder is not None:
            self.__dict__["encoder"] = encoder  # what cached_property would have stored

    @cached_property
    def encoder(self) -> Encoder:
        return load_encoder(self.settings)

    @cached_property
    def batching(self) -> BatchingEncoder:
        from appliance.identification.batching import BatchingEncoder

        return BatchingEncoder(self.encoder, self.settings.encoder)

    @cached_property
    def cache(self) -> EmbeddingCache:
        from appliance.identification.cache import create_cache

        return create_cache(self.settings.cache)

    @cached_property
    def embedder(self) -> Embedder:
        from appliance.identification.identify import Embedder

        return Embedder(self.batching, self.cache, self.settings.limits)

    @cached_property
    def identifier(self) -> Identifier:
        from appliance.identification.identify import Identifier

        return Identifier(
            embedder=self.embedder,
            catalog=self.catalog,
            submissions=self.submissions,
            store=self.store,
            top_k=self.settings.catalog.top_k,
            client_secret=load_or_create_secret(self.settings.data_dir / "client-id.key"),
        )

    @cached_property
    def intake(self) -> Intake:
        from appliance.intake.deliveries import Intake
        from appliance.intake.downloads import Downloader
        from appliance.intake.jotform import FieldMap, JotformApi

        jotform = self.settings.jotform
        api = None
        if jotform.verify_submissions and jotform.api_key:
            api = JotformApi(jotform.api_url, jotform.api_key, jotform.download_timeout_seconds)
        return Intake(
            identifier=self.identifier,
            submissions=self.submissions,
            store=self.store,
            downloader=Downloader.create(
                jotform.upload_origins,
                max_bytes=self.settings.limits.max_bytes,
                timeout_s=jotform.download_timeout_seconds,
                jotform_api_key=jotform.api_key,
            ),
            field_map=FieldMap.from_pairs(jotform.field_map),
            jotform_api=api,
            max_images=jotform.max_images_per_delivery,
            # A repeat waits about as long as the first delivery may take to download.
            repeat_wait_s=2 * jotform.download_timeout_seconds,
        )

    @cached_property
    def api_keys(self) -> ApiKeys:
        return ApiKeys(self.database.pool)

    # The staff console's use cases. Accounts need no model; the others embed images.
    @cached_property
    def accounts(self) -> Accounts:
        secret = load_or_create_secret(self.settings.data_dir / "client-id.key")
        return Accounts(
            self.database.pool,
            signing_key=hmac.new(secret, b"admin-session", "sha256").digest(),
            session_minutes=self.settings.admin.session_minutes,
        )

    @cached_property
    def curation(self) -> Curation:
        return Curation(self.database.pool, self.catalog, self.embedder, self.store)

    @cached_property
    def feedback(self) -> Feedback:
        return Feedback(self.database.pool, self.catalog, self.embedder, self.store)

    @cached_property
    def bulk_import(self) -> BulkImport:
        folder = self.settings.data_dir / "imports"
        return BulkImport(self.database.pool, self.catalog, self.embedder, self.store, folder)

    @cached_property
    def erasure(self) -> Erasure:
        return Erasure(self.database.pool, self.store, self.spaces)

    @cached_property
    def retention(self) -> Retention:
        return Retention(self.database.pool, self.store, self.erasure)

    async def import_catalog(
        self,
        specs: Sequence[ReferenceSpec],
        progress: Callable[[int, str], Progress] = Progress,
    ) -> ImportReport:
        """`raiox catalog import` into this appliance (the CLI, the benchmark, the tests)."""
        return await import_catalog(
            specs,
            pool=self.database.pool,
            catalog=self.catalog,
            embedder=self.embedder,
            store=self.store,
            progress=progress,
        )

    def load_identification(self) -> None:
        """Build the model's side now (the server does at start: a refused model stops it
        there, not at its first request)."""
        _ = self.intake

    async def close(self) -> None:
        built = self.__dict__
        if "batching" in built:
            await self.batching.close()
        if "cache" in built:
            await self.cache.close()
        await self.database.close()


async def build_components(settings: Settings, *, encoder: Encoder | None = None) -> Components:
    settings.images_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = await Database.open(settings)
    try:
        return Components(settings, database, encoder=encoder)
    except BaseException:
        await database.close()
        raise


@asynccontextmanager
async def open_components(
    settings: Settings, *, encoder: Encoder | None = None
) -> AsyncIterator[Components]:
    """The components for one `async with`: closed (pool, batching, embedded Postgres) on the
    way out, whatever happens inside."""
    components = await build_components(settings, encoder=encoder)
    try:
        yield components
    finally:
        await components.close()


def _spaces_client(settings: Settings) -> SpacesClient | None:
    if not settings.spaces.enabled:
        return None
    from appliance.sync.spaces import SpacesClient

    return SpacesClient(settings.spaces)


def load_encoder(settings: Settings) -> Encoder:
    """Load the model and refuse a random-weight one unless explicitly allowed."""
    from appliance.identification.encoder import Encoder
    from appliance.identification.imaging import keep_pillow_blocks

    keep_pillow_blocks()
    encoder = Encoder.load(
        settings.model_dir,
        intra_op_threads=settings.encoder.intra_op_threads,
        inter_op_threads=settings.encoder.inter_op_threads,
        execution_provider=settings.encoder.execution_provider,
    )
    if not encoder.pretrained and not settings.allow_untrained_model:
        raise UntrainedModelError(
            f"The model in {settings.model_dir} has random (untrained) weights: its answers are "
            "meaningless. Build a real one with `raiox model build --weights openai`, or set "
            "RAIOX_ALLOW_UNTRAINED_MODEL=1 for tests and demos."
        )
    if not encoder.pretrained:
        log.warning("serving an UNTRAINED model (random weights): results are for demos only")
    return encoder


def load_or_create_secret(path: Path) -> bytes:
    """A per-appliance secret, made once and kept with the data, for deriving client ids."""
    if path.is_file():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    return value
