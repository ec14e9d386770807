"""Builds and closes the appliance's components from Settings, for the HTTP app and the CLI
alike, so both run exactly the same code against the same adapters."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from appliance.catalog.repository import Catalog
from appliance.database import Database
from appliance.errors import AppError
from appliance.identification.batching import BatchingEncoder
from appliance.identification.cache import EmbeddingCache, create_cache
from appliance.identification.encoder import Encoder
from appliance.identification.identify import Embedder, Identifier
from appliance.settings import Settings
from appliance.storage import ImageReader, LocalImageStore, PresignedUrls
from appliance.submissions import SubmissionRepository

log = logging.getLogger(__name__)


class UntrainedModelError(AppError):
    status_code = 503
    code = "untrained_model"


@dataclass
class Components:
    settings: Settings
    database: Database
    encoder: Encoder
    batching: BatchingEncoder
    cache: EmbeddingCache
    catalog: Catalog
    submissions: SubmissionRepository
    store: LocalImageStore
    embedder: Embedder
    identifier: Identifier
    spaces: PresignedUrls | None = None

    @property
    def images(self) -> ImageReader:
        return ImageReader(self.store, self.spaces, self.settings.spaces.presign_seconds)

    async def close(self) -> None:
        await self.batching.close()
        await self.cache.close()
        await self.database.close()


def load_encoder(settings: Settings) -> Encoder:
    """Load the model and refuse a random-weight one unless explicitly allowed."""
    encoder = Encoder.load(
        settings.model_dir,
        intra_op_threads=settings.encoder.intra_op_threads,
        inter_op_threads=settings.encoder.inter_op_threads,
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


async def build_components(settings: Settings) -> Components:
    encoder = load_encoder(settings)
    settings.images_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = await Database.open(settings)
    try:
        batching = BatchingEncoder(encoder, settings.encoder)
        cache = create_cache(settings.cache)
        catalog = Catalog(database.pool, hnsw_threshold=settings.catalog.hnsw_threshold)
        submissions = SubmissionRepository(database.pool)
        store = LocalImageStore(settings.images_dir)
        embedder = Embedder(batching, cache, settings.limits)
        identifier = Identifier(
            embedder=embedder,
            catalog=catalog,
            submissions=submissions,
            store=store,
            top_k=settings.catalog.top_k,
            client_secret=load_or_create_secret(settings.data_dir / "client-id.key"),
        )
    except BaseException:
        await database.close()
        raise
    return Components(
        settings,
        database,
        encoder,
        batching,
        cache,
        catalog,
        submissions,
        store,
        embedder,
        identifier,
    )
