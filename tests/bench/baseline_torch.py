"""The prototype's way of identifying, as a baseline for tests/bench/http.py: a synchronous
handler that decodes with PIL, preprocesses and embeds with open_clip torch fp32 in eager mode
(one image per call), then asks Postgres for the three nearest implants.

Run from the repository root (same random weights, seed 0):
    python -m tests.bench.baseline_torch PORT DATABASE_URL
"""

from __future__ import annotations

import io
import sys
from typing import Any

import asyncpg
import numpy as np
import open_clip
import torch
import uvicorn
from litestar import Litestar, Request, post
from pgvector.asyncpg import register_vector
from PIL import Image

torch.manual_seed(0)
MODEL, _, PREPROCESS = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
MODEL.eval()
POOL: dict[str, Any] = {}

SEARCH = """
WITH best AS (
    SELECT DISTINCT ON (implant_id) implant_id, embedding <=> $1 AS distance
    FROM reference_images ORDER BY implant_id, embedding <=> $1
)
SELECT implant_id, 1 - distance AS similarity FROM best ORDER BY distance LIMIT 3
"""


def embed(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    with torch.no_grad():
        features = MODEL.encode_image(PREPROCESS(image).unsqueeze(0))
        features = features / features.norm(dim=-1, keepdim=True)
    vector: np.ndarray = features[0].numpy().astype(np.float32)
    return vector


@post("/upload", status_code=200)
async def upload(request: Request[Any, Any, Any]) -> dict[str, Any]:
    form = await request.form()
    data = await form["file"].read()
    import anyio.to_thread

    vector = await anyio.to_thread.run_sync(embed, data)
    rows = await POOL["pool"].fetch(SEARCH, vector)
    return {"matches": [dict(r) for r in rows]}


async def startup(app: Litestar) -> None:
    POOL["pool"] = await asyncpg.create_pool(
        sys.argv[2], init=register_vector, min_size=1, max_size=4
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    app = Litestar([upload], on_startup=[startup], request_max_body_size=50 * 2**20)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
