"""Micro-batching in front of the ONNX encoder, with a bounded queue for backpressure.

On two cores one ORT call on a batch of 8 costs much less than 8 calls of 1, so concurrent
requests are gathered and encoded together by a worker thread. Nothing waits for a batch that
is not coming: a batch is whatever is queued when the worker is free (up to the batch size),
plus at most RAIOX_BATCH_MAX_WAIT_MS for requests already being preprocessed. When the queue
is full the request is refused at once (503 + Retry-After) instead of queueing without bound.

Each request's image is decoded and preprocessed in a pool of two threads (the cores), so
however many requests wait, at most two images are decoded in memory at once: the rest wait
as bytes, and what waits for the model is a 600 KB array.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from appliance import metrics
from appliance.errors import ServiceUnavailableError
from appliance.identification.encoder import Encoder
from appliance.identification.imaging import PreprocessParams
from appliance.settings import EncoderSettings

log = logging.getLogger(__name__)


# Turns one request's image into model input; raises the image's own errors (ImageError).
Prepare = Callable[[PreprocessParams], np.ndarray]


class EncoderOverloadedError(ServiceUnavailableError):
    code = "overloaded"


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class BatchingEncoder:
    def __init__(
        self,
        encoder: Encoder,
        settings: EncoderSettings | None = None,
    ) -> None:
        settings = settings or EncoderSettings()
        self._encoder = encoder
        self.model_id = encoder.model_id
        self.pretrained = encoder.pretrained
        self.preprocess_params = encoder.preprocess_params
        self._max_batch = settings.batch_max_size
        self._max_wait = settings.batch_max_wait_ms / 1000
        self._queue_max = settings.queue_max
        self._queue_wait = settings.queue_wait_seconds
        self._queue: asyncio.Queue[_Job] | None = None
        self._admitted = 0  # requests holding a place (see admit)
        self._incoming = 0  # embeddings still being preprocessed
        self._worker: asyncio.Task[None] | None = None
        self._ort = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess")
        self.calls = 0  # ORT invocations, for tests and the batch-size metric
        self._batch: np.ndarray | None = None  # the model's input, reused (see _encode)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place in the queue for a whole request, or refuse it at once when full, so
        overload is turned away before anything is decoded or stored."""
        if self._admitted >= self._queue_max:
            metrics.REJECTED.labels("queue_full").inc()
            raise EncoderOverloadedError(
                "The appliance is busy; retry in a moment.", retry_after_s=1
            )
        self._admitted += 1
        metrics.QUEUE_DEPTH.inc()
        try:
            yield
        finally:
            self._admitted -= 1
            metrics.QUEUE_DEPTH.dec()

    async def embed(self, prepare: Prepare) -> np.ndarray:
        loop = asyncio.get_running_loop()
        self._incoming += 1
        try:
            pixels = await loop.run_in_executor(self._prep, prepare, self.preprocess_params)
        finally:
            self._incoming -= 1
        job = _Job(pixels, loop.create_future())
        self._ensure_worker().put_nowait(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self._queue_wait)
        except TimeoutError as exc:
            metrics.REJECTED.labels("timeout").inc()
            raise EncoderOverloadedError(
                "The model queue did not clear in time; retry in a moment.", retry_after_s=2
            ) from exc

    def _ensure_worker(self) -> asyncio.Queue[_Job]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(self._queue))
        return self._queue

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self._max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                elif self._incoming > 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.0005)  # a request is still being preprocessed
                else:
                    break
            live = [job for job in batch if not job.future.done()]
            if not live:
                continue
            started = time.perf_counter()
            for job in live:
                metrics.STAGE_SECONDS.labels("queue").observe(started - job.queued_at)
            try:
                vectors = await loop.run_in_executor(
                    self._ort, self._encode, [job.pixels for job in live]
                )
            except Exception as exc:  # the model failing must fail the requests, not the loop
                log.exception("encoder failed on a batch of %d", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            metrics.BATCH_SIZE.observe(len(live))
            encoded = time.perf_counter() - started  # each image waited for its whole batch
            for _ in live:
                metrics.STAGE_SECONDS.labels("encode").observe(encoded)
            for job, vector in zip(live, vectors, strict=True):
                if not job.future.done():
                    job.future.set_result(vector)

    def _encode(self, images: list[np.ndarray]) -> np.ndarray:
        """Runs on the one ORT thread, so one input buffer serves every batch: a fresh 5 MB
        array per batch was mapped and page-faulted anew each time."""
        self.calls += 1
        if self._batch is None or self._batch.shape[1:] != images[0].shape:
            self._batch = np.empty((self._max_batch, *images[0].shape), dtype=np.float32)
        pixels = np.stack(images, out=self._batch[: len(images)])
        vectors: np.ndarray = self._encoder.encode(pixels)
        return vectors

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._ort.shutdown(wait=False, cancel_futures=True)
        self._prep.shutdown(wait=False, cancel_futures=True)
