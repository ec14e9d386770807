"""Encoder benchmark: open_clip torch fp32 (eager) against ONNX Runtime fp32 and int8, all in
one run on the same random-weight ViT-B-32.

    python tests/bench/model.py [--model-dir DIR] [--rounds N]

Prints one JSON object (keys are read by other tools; do not rename them). Latencies are
medians over repeated runs after a warm-up, with 2 threads each (the appliance's default);
peak RSS (VmHWM) comes from fresh child processes that load one engine and encode one image.
Targets: int8 batch 1 <= 0.45 x torch; int8 encoder RSS <= 250 MB; cosine mean >= 0.999,
min >= 0.995; nearest-neighbour agreement >= 0.96.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Replace this script's folder on the path: tests/bench/http.py would shadow the stdlib `http`.
sys.path[0] = str(ROOT)

from appliance.identification.encoder import Encoder
from appliance.identification.imaging import PreprocessParams, preprocess_batch
from appliance.identification.manifest import ModelManifest
from model.evaluate import parity, synthetic_images

THREADS = 2
PARITY_SEED = 2024

# ru_maxrss survives fork and exec on Linux, so a child of this (large) process would report
# our peak; VmHWM is the high-water mark of the child's own address space.
_PEAK_RSS = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

_INT8_CHILD = (
    _PEAK_RSS
    + """
import sys
from pathlib import Path
from appliance.identification.encoder import Encoder
from appliance.identification.imaging import preprocess
from model.evaluate import synthetic_images
encoder = Encoder.load(Path(sys.argv[1]), intra_op_threads=2)
image = synthetic_images(1)[0]
encoder.encode(preprocess(image, encoder.preprocess_params)[None])
print(peak_rss_mb())
"""
)

_TORCH_CHILD = (
    _PEAK_RSS
    + """
import sys
import torch
from model.export import embed_torch, load_clip
from model.evaluate import synthetic_images
torch.set_num_threads(2)
clip = load_clip("random", seed=0, quick_gelu=sys.argv[1] == "quick_gelu")
embed_torch(clip, synthetic_images(1))
print(peak_rss_mb())
"""
)


def ensure_model(model_dir: Path | None) -> Path:
    if model_dir is None:
        from tests.fixtures.model import cached_random_model

        return cached_random_model()
    if not (model_dir / "manifest.json").is_file():
        from model.build import build_model

        build_model("random", model_dir, keep_fp32=True, progress=print)
    return model_dir


def torch_engine(manifest: ModelManifest) -> Callable[[np.ndarray], np.ndarray]:
    """open_clip in eager fp32, as the prototype ran it (weights only matter for parity)."""
    import torch

    from model.export import load_clip

    torch.set_num_threads(THREADS)
    clip = load_clip("random", seed=manifest.seed or 0, quick_gelu=manifest.activation != "gelu")
    encode = cast(Callable[[torch.Tensor], torch.Tensor], clip.model.encode_image)

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            features = encode(torch.from_numpy(pixels))
            result: np.ndarray = torch.nn.functional.normalize(features, dim=-1).numpy()
        return result

    return run


def time_engines(
    engines: dict[str, Callable[[np.ndarray], np.ndarray]], pixels: np.ndarray, rounds: int
) -> dict[str, float]:
    """Median milliseconds per image, one engine after the other: interleaving them would
    time each against the previous one's thread pool, which keeps spinning for a while."""
    medians = {}
    for name, engine in engines.items():
        for _ in range(3):
            engine(pixels)
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            engine(pixels)
            samples.append((time.perf_counter() - start) * 1000 / len(pixels))
        medians[name] = round(statistics.median(samples), 2)
    return medians


def child_peak_rss(code: str, *args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    model_dir = ensure_model(args.model_dir)
    manifest = ModelManifest.load(model_dir)
    if manifest.fp32_file is None:
        sys.exit(f"{model_dir} has no fp32 graph: build it with keep_fp32 (raiox: --fp32)")
    int8 = Encoder.load(model_dir, intra_op_threads=THREADS)
    fp32 = Encoder.load(model_dir, intra_op_threads=THREADS, model_file=manifest.fp32_file)
    engines = {
        "torch_fp32": torch_engine(manifest),
        "ort_fp32": fp32.encode,
        "ort_int8": int8.encode,
    }

    pixels = preprocess_batch(synthetic_images(64, seed=PARITY_SEED), PreprocessParams())
    batch1 = time_engines(engines, pixels[:1], args.rounds)
    batch8 = time_engines(engines, pixels[:8], max(3, args.rounds // 3))
    figures = parity(
        np.concatenate([fp32.encode(pixels[i : i + 8]) for i in range(0, len(pixels), 8)]),
        np.concatenate([int8.encode(pixels[i : i + 8]) for i in range(0, len(pixels), 8)]),
    )
    result = {
        "batch1_ms": batch1,
        "batch8_ms_per_image": batch8,
        "int8_vs_torch_batch1": round(batch1["ort_int8"] / batch1["torch_fp32"], 3),
        "rss_mb": {
            "int8_encoder": child_peak_rss(_INT8_CHILD, str(model_dir)),
            "torch": child_peak_rss(_TORCH_CHILD, manifest.activation),
        },
        "cosine_int8_vs_fp32": {
            "mean": round(figures.cosine_mean, 6),
            "min": round(figures.cosine_min, 6),
        },
        "nn_agreement": round(figures.nn_agreement, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
