"""The one owner of "identify this image": admission, decode, hash once, keep on disk, record,
embed (cache or model), search, and record the result or the failure once.

Two entry points share that path. A direct upload (`identify_upload`, HTTP or CLI) is checked
before anything is kept, and recorded whole in one statement once it is identified. An image of
a stored submission (`identify_stored`, webhook deliveries and their retries) is kept on disk
and recorded as soon as it decodes, so a later failure is retried from disk, not from the
sender; its result, or its failure, is then written once, in one transaction.
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
from PIL import Image

from appliance import metrics
from appliance.catalog.repository import Catalog, Match
from appliance.errors import AppError
from appliance.identification.batching import Prepare
from appliance.identification.cache import EmbeddingCache
from appliance.identification.imaging import (
    DecodedImage,
    PreprocessParams,
    decode_image,
    identify_format,
    preprocess,
)
from appliance.settings import ImageLimits
from appliance.storage import LocalImageStore, StoredObject, client_key, sha256_hex, upload_key
from appliance.submissions import (
    Source,
    Submission,
    SubmissionImage,
    SubmissionRepository,
    Submitter,
    client_id_for,
)

log = logging.getLogger(__name__)


class ImageEncoder(Protocol):
    """What identification needs from the model: one image in, one unit vector out."""

    model_id: str
    pretrained: bool
    preprocess_params: PreprocessParams

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


def storage_key(source: Source, client_id: str | None, sha256: str, extension: str) -> str:
    """Form deliveries are kept per dentist (clientes/{id}/), direct uploads in uploads/."""
    if client_id and source.is_form:
        return client_key(client_id, sha256, extension)
    return upload_key(sha256, extension)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - start)


def decode_then_preprocess(
    data: bytes, limits: ImageLimits, params: PreprocessParams
) -> np.ndarray:
    """Bytes to model input in one thread hop (the decoded image is freed on return), with
    each step timed on its own."""
    with timed("decode"):
        image = decode_image(data, limits, reduce_to=params.image_size).image
    return timed_preprocess(image, params)


def timed_preprocess(image: Image.Image, params: PreprocessParams) -> np.ndarray:
    with timed("preprocess"):
        return preprocess(image, params)


@contextmanager
def counted(source: str) -> Iterator[None]:
    """One identification's outcome: ok, invalid (its input was refused, 4xx) or error."""
    try:
        yield
    except AppError as exc:
        outcome = "invalid" if exc.status_code < 500 else "error"
        metrics.IDENTIFICATIONS.labels(source, outcome).inc()
        raise
    except Exception:
        metrics.IDENTIFICATIONS.labels(source, "error").inc()
        raise
    metrics.IDENTIFICATIONS.labels(source, "ok").inc()


class Embedder:
    """Bytes to vector, with the cache in front of the model and CPU work off the event loop."""

    def __init__(self, encoder: ImageEncoder, cache: EmbeddingCache, limits: ImageLimits) -> None:
        self.encoder = encoder
        self.cache = cache
        self.limits = limits

    async def decode(self, data: bytes) -> DecodedImage:
        with timed("decode"):
            reduce_to = self.encoder.preprocess_params.image_size
            return await asyncio.to_thread(decode_image, data, self.limits, reduce_to=reduce_to)

    async def embed(self, data: bytes) -> Embedding:
        """A cache hit costs a hash and a header read, in one thread hop: those bytes were
        decoded before. The header check also refuses a non-image before the cache is asked."""
        digest, (content_type, extension) = await asyncio.to_thread(self._fingerprint, data)
        prepare = partial(decode_then_preprocess, data, self.limits)
        vector = await self._vector(digest, prepare)  # decoded only on a miss
        return Embedding(digest, content_type, extension, vector)

    async def embed_decoded(self, decoded: DecodedImage, digest: str) -> Embedding:
        """An image already decoded (and hashed) by the caller."""
        vector = await self._vector(digest, partial(timed_preprocess, decoded.image))
        return Embedding(digest, decoded.content_type, decoded.extension, vector)

    async def _vector(self, digest: str, prepare: Prepare) -> np.ndarray:
        with timed("cache"):
            vector = await self.cache.get(self.encoder.model_id, digest)
        if vector is None:
            vector = await self.encoder.embed(prepare)  # times its queue and encode stages
            await self.cache.put(self.encoder.model_id, digest, vector)
        return vector

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
        self._client_secret = client_secret

    @property
    def model_id(self) -> str:
        return self.embedder.encoder.model_id

    @property
    def model_pretrained(self) -> bool:
        return self.embedder.encoder.pretrained

    def client_id(self, email: str | None) -> str | None:
        """The dentist's folder name (clientes/{id}/): stable, and no way back to the email."""
        return client_id_for(email, self._client_secret)

    async def identify_upload(
        self, data: bytes, *, source: Source, submitter: Submitter
    ) -> Submission:
        """One image submitted directly (HTTP upload, CLI): validated before anything is kept."""
        with counted(source):
            return await self._identify_upload(data, source=source, submitter=submitter)

    async def _identify_upload(
        self, data: bytes, *, source: Source, submitter: Submitter
    ) -> Submission:
        async with self.embedder.encoder.admit():
            await self.catalog.check_model(self.model_id)
            embedding = await self.embedder.embed(data)  # validates: a bad image stores nothing
            client_id = self.client_id(submitter.dentist_email)
            key = storage_key(source, client_id, embedding.sha256, embedding.extension)
            async with self.store.kept_only_if_recorded(key):
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
            return submission

    async def identify_stored(
        self, submission: Submission, image: SubmissionImage, data: bytes
    ) -> None:
        """Identify one image of a stored submission. The bytes are kept on disk and recorded
        before the slow work; the result, or the failure (then re-raised), is written once."""
        try:
            async with self.embedder.encoder.admit():
                decoded = await self.embedder.decode(data)
                digest = await asyncio.to_thread(sha256_hex, data)
                key = storage_key(
                    submission.source, submission.client_id, digest, decoded.extension
                )
                async with self.store.kept_only_if_recorded(key):
                    with timed("store"):
                        stored = await self.store.put(
                            key, data, decoded.content_type, sha256=digest
                        )
                    if image.storage_key is None:  # a retry never needs the sender again
                        await self.submissions.record_stored(image.id, stored)
                embedding = await self.embedder.embed_decoded(decoded, digest)
                with timed("search"):
                    matches = await self.catalog.search(embedding.vector, self.model_id, self.top_k)
                with timed("record"):
                    await self.submissions.record_result(
                        image.id,
                        stored,
                        model_id=self.model_id,
                        model_pretrained=self.model_pretrained,
                        matches=matches,
                    )
        except AppError as exc:
            await self.record_failure(image, exc.detail)
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

    async def record_failure(self, image: SubmissionImage, reason: str) -> None:
        """Written once per failure; a database that is itself what failed is only logged."""
        try:
            await self.submissions.mark_image_failed(image.id, reason)
        except Exception:  # the database may be what failed; the original error matters more
            log.warning("could not record the failure of image %s", image.id)
