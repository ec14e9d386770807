"""The identification use case: image bytes -> hash -> cache/encode -> search -> record -> result.

The order is chosen so that nothing is lost and nothing half-written stays behind: a bad image
is refused before anything is stored; a good one is on disk before the database is touched;
the submission row exists before the slow work, and its result is written in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from appliance import metrics
from appliance.catalog.repository import Catalog, Match
from appliance.errors import AppError
from appliance.identification.batching import Prepare
from appliance.identification.cache import EmbeddingCache
from appliance.identification.imaging import (
    DecodedImage,
    decode_and_preprocess,
    decode_image,
    identify_format,
    preprocess,
)
from appliance.settings import ImageLimits
from appliance.storage import LocalImageStore, StoredObject, client_key, sha256_hex, upload_key
from appliance.submissions import (
    Submission,
    SubmissionImage,
    SubmissionRepository,
    Submitter,
    client_id_for,
)

log = logging.getLogger(__name__)

# Form deliveries are kept per dentist (the seed's clientes/{id}/); direct uploads in uploads/.
FORM_SOURCES = frozenset({"jotform", "webhook"})


class ImageEncoder(Protocol):
    """What identification needs from the model: one image in, one unit vector out."""

    model_id: str
    pretrained: bool

    def admit(self) -> AbstractAsyncContextManager[None]:
        """Hold a place for one request; raise a 503-type error at once when saturated."""
        ...

    async def embed(self, prepare: Prepare) -> np.ndarray:
        """Run `prepare` (decode and/or preprocess, CPU-bound) off the event loop, then the
        model on its result."""
        ...


@dataclass(frozen=True)
class Embedding:
    sha256: str
    content_type: str
    extension: str
    vector: np.ndarray


def storage_key(source: str, client_id: str | None, sha256: str, extension: str) -> str:
    if client_id and source in FORM_SOURCES:
        return client_key(client_id, sha256, extension)
    return upload_key(sha256, extension)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - start)


class Embedder:
    """Bytes to vector, with the cache in front of the model and CPU work off the event loop."""

    def __init__(self, encoder: ImageEncoder, cache: EmbeddingCache, limits: ImageLimits) -> None:
        self.encoder = encoder
        self.cache = cache
        self.limits = limits

    async def decode(self, data: bytes) -> DecodedImage:
        with timed("decode"):
            return await asyncio.to_thread(decode_image, data, self.limits)

    async def embed(self, data: bytes, decoded: DecodedImage | None = None) -> Embedding:
        """A cache hit costs a hash and a header read, in one thread hop: those bytes were
        decoded before. The header check also refuses a non-image before the cache is asked."""
        digest, (content_type, extension) = await asyncio.to_thread(self._fingerprint, data)
        with timed("cache"):
            vector = await self.cache.get(self.encoder.model_id, digest)
        if vector is None:
            prepare: Prepare = (
                partial(decode_and_preprocess, data, self.limits)
                if decoded is None
                else partial(preprocess, decoded.image)
            )
            with timed("encode"):  # decoding included, for a bytes-only upload
                vector = await self.encoder.embed(prepare)
            await self.cache.put(self.encoder.model_id, digest, vector)
        return Embedding(digest, content_type, extension, vector)

    def _fingerprint(self, data: bytes) -> tuple[str, tuple[str, str]]:
        return sha256_hex(data), identify_format(data, self.limits)


class Identifier:
    def __init__(
        self,
        *,
        embedder: Embedder,
        catalog: Catalog,
        submissions: SubmissionRepository,
        store: LocalImageStore,
        top_k: int,
        client_secret: bytes,
    ) -> None:
        self.embedder = embedder
        self.catalog = catalog
        self.submissions = submissions
        self.store = store
        self.top_k = top_k
        self.client_secret = client_secret

    @property
    def model_id(self) -> str:
        return self.embedder.encoder.model_id

    @property
    def model_pretrained(self) -> bool:
        return self.embedder.encoder.pretrained

    async def identify_upload(
        self, data: bytes, *, source: str, submitter: Submitter
    ) -> Submission:
        """One image submitted directly (HTTP upload, CLI): validated before anything is kept."""
        async with self.embedder.encoder.admit():
            await self.catalog.check_model(self.model_id)
            embedding = await self.embedder.embed(data)  # validates: a bad image stores nothing
            client_id = client_id_for(submitter.dentist_email, self.client_secret)
            key = storage_key(source, client_id, embedding.sha256, embedding.extension)
            stored, matches = await self._keep_and_search(key, data, embedding)
            with timed("record"):
                submission = await self.submissions.create_done(
                    source=source,
                    submitter=submitter,
                    client_id=client_id,
                    stored=stored,
                    model_id=self.model_id,
                    model_pretrained=self.model_pretrained,
                    matches=matches,
                )
            metrics.IDENTIFICATIONS.labels(source, "ok").inc()
            return submission

    async def process_image(
        self,
        submission: Submission,
        image: SubmissionImage,
        data: bytes,
        decoded: DecodedImage | None = None,
    ) -> None:
        """Store, embed, search and record one image; a failure is recorded on the image and
        re-raised, with the bytes kept on disk for a retry."""
        try:
            embedding = await self.embedder.embed(data, decoded)
            key = storage_key(
                submission.source, submission.client_id, embedding.sha256, embedding.extension
            )
            stored, matches = await self._keep_and_search(key, data, embedding)
            with timed("record"):
                await self.submissions.record_result(
                    image.id,
                    stored,
                    model_id=self.model_id,
                    model_pretrained=self.model_pretrained,
                    matches=matches,
                )
        except AppError as exc:
            await self._fail_image(image, exc.detail)
            raise

    async def _keep_and_search(
        self, key: str, data: bytes, embedding: Embedding
    ) -> tuple[StoredObject, list[Match]]:
        """On disk before the database is touched: an outage there loses no image."""
        with timed("store"):
            stored = await self.store.put(
                key, data, embedding.content_type, sha256=embedding.sha256
            )
        with timed("search"):
            matches = await self.catalog.search(embedding.vector, self.model_id, self.top_k)
        return stored, matches

    async def finish(self, submission: Submission) -> Submission:
        finished = await self.submissions.finish(submission.id)
        outcome = "ok" if finished.status == "done" else "error"
        metrics.IDENTIFICATIONS.labels(submission.source, outcome).inc()
        return finished

    async def _fail_image(self, image: SubmissionImage, reason: str) -> None:
        try:
            await self.submissions.mark_image_failed(image.id, reason)
        except Exception:  # the database may be what failed; the original error matters more
            log.warning("could not record the failure of image %s", image.id)
