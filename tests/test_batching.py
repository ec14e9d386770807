"""Micro-batching returns each request its own vector; a full queue refuses politely."""

from __future__ import annotations

import asyncio
import io
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample
from appliance.components import Components
from appliance.identification.batching import BatchingEncoder
from appliance.identification.encoder import Encoder
from appliance.identification.identify import decode_then_preprocess
from appliance.identification.imaging import decode_image, preprocess
from appliance.settings import EncoderSettings, ImageLimits
from tests.fixtures.appliance import asgi_client, variant


def distinct_images(count: int, seed: int) -> list[bytes]:
    return [
        png_bytes(render_patient_sample(DEMO_IMPLANTS[(seed + n) % 32], seed=seed + n))
        for n in range(count)
    ]


async def test_concurrent_requests_get_exactly_their_own_vectors(encoder: Encoder) -> None:
    images = [decode_image(data, ImageLimits()).image for data in distinct_images(12, 100)]
    single = BatchingEncoder(encoder, EncoderSettings(batch_max_size=1))
    batched = BatchingEncoder(encoder, EncoderSettings(batch_max_wait_ms=5))
    try:
        alone = np.stack([await single.embed(partial(preprocess, image)) for image in images])
        together = np.stack(
            await asyncio.gather(*(batched.embed(partial(preprocess, image)) for image in images))
        )
    finally:
        await single.close()
        await batched.close()
    assert batched.calls < len(images), "concurrent requests were batched"
    similarity = together @ alone.T
    # each answer is its own image's vector (dynamic int8 shifts it only in the 4th decimal)
    assert np.all(np.argmax(similarity, axis=1) == np.arange(len(images)))
    assert np.min(np.diag(similarity)) > 0.999


async def test_a_lone_request_does_not_wait_for_a_batch(encoder: Encoder) -> None:
    prepare = partial(decode_then_preprocess, distinct_images(1, 7)[0], ImageLimits())
    batching = BatchingEncoder(encoder, EncoderSettings(batch_max_wait_ms=2000))
    try:
        loop = asyncio.get_running_loop()
        await batching.embed(prepare)  # warm-up
        start = loop.time()
        await batching.embed(prepare)
        elapsed = loop.time() - start
    finally:
        await batching.close()
    assert elapsed < 1.0, "the 2 s batch window only applies while others are arriving"


async def test_full_queue_answers_503_with_retry_after_and_recovers(
    demo_components: Components,
) -> None:
    tight = EncoderSettings(batch_max_size=2, queue_max=2)  # holds only 2 requests
    uploads = distinct_images(16, 300)
    async with variant(demo_components, encoder=tight) as comps, asgi_client(comps) as client:

        async def send(data: bytes) -> Any:
            return await client.post("/upload", files={"file": ("x.png", data, "image/png")})

        count = "SELECT count(*) FROM submissions"
        before = await comps.database.pool.fetchval(count)
        responses = await asyncio.gather(*(send(data) for data in uploads))
        statuses = [r.status_code for r in responses]
        assert 500 not in statuses
        rejected = [r for r in responses if r.status_code == 503]
        assert rejected, f"a burst of 16 against a queue of 2 must be refused in part: {statuses}"
        assert all(r.headers.get("retry-after") for r in rejected)
        assert {r.json()["error"] for r in rejected} == {"overloaded"}
        assert statuses.count(200) >= 2
        # refused requests left nothing behind: one submission per accepted request
        after = await comps.database.pool.fetchval(count)
        assert after - before == statuses.count(200)
        # recovers at once
        buf = io.BytesIO()
        Image.open(io.BytesIO(uploads[0])).convert("RGB").save(buf, "JPEG")
        after = await send(buf.getvalue())
        assert after.status_code == 200, after.text
    await comps.batching.close()
