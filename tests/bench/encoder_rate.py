"""The encoder's own throughput at batch 8 (already preprocessed images, 2 ORT threads, the
appliance's settings): the ceiling that the HTTP path and `catalog import` are compared with.

    python -m tests.bench.encoder_rate MODEL_DIR   # prints images/s
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

BATCH = 8


def sample_pixels(encoder: object) -> np.ndarray:
    """Eight demo radiographs, preprocessed as the appliance does it."""
    from appliance.catalog.demo import DEMO_IMPLANTS, render_patient_sample
    from appliance.identification.imaging import preprocess

    params = encoder.preprocess_params  # type: ignore[attr-defined]
    images = [render_patient_sample(DEMO_IMPLANTS[i], seed=i).convert("RGB") for i in range(BATCH)]
    return np.stack([preprocess(image, params) for image in images])


def images_per_s(encoder: object, pixels: np.ndarray, rounds: int = 12) -> float:
    encode = encoder.encode  # type: ignore[attr-defined]
    encode(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        encode(pixels)
    return len(pixels) * rounds / (time.perf_counter() - start)


def main() -> None:
    from appliance.identification.encoder import Encoder

    encoder = Encoder.load(Path(sys.argv[1]), intra_op_threads=2)
    print(round(images_per_s(encoder, sample_pixels(encoder)), 2))


if __name__ == "__main__":
    main()
