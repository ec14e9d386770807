"""The encoder's own throughput at batch 8 (already preprocessed images, 2 ORT threads, the
appliance's settings): the ceiling that the HTTP path and `catalog import` are compared with.

    python -m tests.bench.encoder_rate MODEL_DIR   # prints {"images_per_s", "cpu_ms_per_image"}
    python -m tests.bench.encoder_rate MODEL_DIR --serve   # one such line per ROUNDS read on stdin

The CPU time per image is what the model alone costs on these cores, all its threads together:
where other work shares the machine it moves much less than the rate.
"""

from __future__ import annotations

import json
import resource
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


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def measure(encoder: object, pixels: np.ndarray, rounds: int) -> dict[str, float]:
    encoder.encode(pixels)  # type: ignore[attr-defined]  # one-off costs count in neither figure
    start = cpu_seconds()
    rate = images_per_s(encoder, pixels, rounds)  # its own warm-up is a steady-state run
    cpu_ms = (cpu_seconds() - start) * 1000 / (len(pixels) * (rounds + 1))
    return {"images_per_s": round(rate, 2), "cpu_ms_per_image": round(cpu_ms, 1)}


def main() -> None:
    """With --serve the model stays loaded and measures on demand, so a benchmark can take the
    model's rate right next to each of its own measurements (this machine's speed drifts)."""
    from appliance.identification.encoder import Encoder

    encoder = Encoder.load(Path(sys.argv[1]), intra_op_threads=2)
    pixels = sample_pixels(encoder)
    if "--serve" not in sys.argv[2:]:
        print(json.dumps(measure(encoder, pixels, 12)))
        return
    for line in sys.stdin:
        print(json.dumps(measure(encoder, pixels, int(line))), flush=True)


if __name__ == "__main__":
    main()
