"""The GPU path's speed: ViT-B/32's fp16 graph on onnxruntime's CUDA provider, run the way the
appliance runs it (`Encoder.load(..., execution_provider="cuda")`, numpy in and out), next to
the fp32 graph on CUDA and open_clip's torch eager fp16 on the same GPU.

    python tests/bench/gpu.py --model-dir DIR [--build]   # prints one JSON object

`--build` first builds a random-weight model with its fp16 graph into DIR (the export path of
`raiox model build --precision fp16`). Needs onnxruntime-gpu and an NVIDIA GPU; CI never runs
it (no GPU there). Random weights run at the trained model's speed (same graph), and the JSON
says which weights it measured. Batch 1 is the latency one dentist sees; batches 64 and 256
are what `catalog import` or a busy network could feed it. "iobinding" keeps the input on the
GPU: the difference to the plain figure is what numpy in and out costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Replace this script's folder on the path: tests/bench/http.py would shadow the stdlib `http`.
sys.path[0] = str(ROOT)

import onnxruntime as ort

from appliance.identification.encoder import Encoder
from appliance.identification.imaging import PreprocessParams, preprocess_batch
from appliance.identification.manifest import ModelManifest
from model.evaluate import synthetic_images

LATENCY_RUNS = 200
THROUGHPUT_RUNS = 20
BATCHES = (64, 256)


def timings_ms(run: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return times


def p99(times: list[float]) -> float:
    return float(np.percentile(times, 99))


def speed(run_batch: Callable[[np.ndarray], object], pixels: np.ndarray) -> dict[str, Any]:
    """Batch-1 p50/p99 ms and, per large batch, images/s over the median run."""
    one = pixels[:1]
    latency = timings_ms(lambda: run_batch(one), LATENCY_RUNS, warmup=20)
    result: dict[str, Any] = {
        "batch1_p50_ms": round(statistics.median(latency), 2),
        "batch1_p99_ms": round(p99(latency), 2),
    }
    for size in BATCHES:
        batch = np.ascontiguousarray(np.resize(pixels, (size, *pixels.shape[1:])))
        times = timings_ms(lambda: run_batch(batch), THROUGHPUT_RUNS, warmup=3)  # noqa: B023
        result[f"batch{size}_images_per_s"] = round(size * 1000 / statistics.median(times))
    return result


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    cosines = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return round(float(cosines.min()), 6)


def onnx_runtime(
    model_dir: Path, graph_file: str, pixels: np.ndarray, reference: np.ndarray
) -> dict[str, Any]:
    encoder = Encoder.load(model_dir, model_file=graph_file, execution_provider="cuda")
    figures: dict[str, Any] = {
        "graph": encoder.graph,
        "execution_provider": encoder.execution_provider,  # what /healthcheck reports
        "cosine_min_vs_fp32_cpu": cosine_min(encoder.encode(pixels), reference),
    }
    if encoder.execution_provider != "cuda":
        return figures  # the CPU fallback: nothing to measure here
    return figures | speed(encoder.encode, pixels)


def io_binding(model_dir: Path, graph_file: str, pixels: np.ndarray) -> dict[str, Any]:
    """The same session with its input and output kept on the GPU."""
    encoder = Encoder.load(model_dir, model_file=graph_file, execution_provider="cuda")
    session = encoder._session  # a benchmark looks inside

    def run(batch: np.ndarray) -> None:
        binding = bound.get(len(batch))
        if binding is None:
            binding = session.io_binding()
            value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
            binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
            binding.bind_output(session.get_outputs()[0].name, "cuda")
            bound[len(batch)] = binding
        session.run_with_iobinding(binding)

    bound: dict[int, Any] = {}
    return speed(run, pixels)


def torch_eager_fp16(pixels: np.ndarray) -> dict[str, Any]:
    """open_clip's own image tower in fp16 on the GPU, input already there (the reference the
    issue quotes: ~5 ms at batch 1, ~30k images/s at batch 256 on an H100)."""
    import torch

    from model.export import load_clip

    model = load_clip("random", seed=0, quick_gelu=True).model
    visual = cast(torch.nn.Module, model.visual).half().cuda().eval()
    on_gpu: dict[int, torch.Tensor] = {}

    def run(batch: np.ndarray) -> None:
        tensor = on_gpu.get(len(batch))
        if tensor is None:
            tensor = on_gpu[len(batch)] = torch.from_numpy(batch).cuda().half()
        with torch.inference_mode():
            visual(tensor)
        torch.cuda.synchronize()

    return speed(run, pixels) | {"torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--build", action="store_true", help="build a random-weight model first")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    if args.build:
        from model.build import build_model

        build_model("random", args.model_dir, fp16=True, progress=print)
    manifest = ModelManifest.load(args.model_dir)
    if not (manifest.fp16_file and manifest.fp32_file):
        sys.exit(f"{args.model_dir} has no fp16 or no fp32 graph: build it with --precision fp16")
    pixels = preprocess_batch(synthetic_images(8, seed=77), PreprocessParams())
    reference = Encoder.load(args.model_dir, model_file=manifest.fp32_file).encode(pixels)
    result: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "weights": manifest.weights,
        "pretrained": manifest.pretrained,
        "fp16": onnx_runtime(args.model_dir, manifest.fp16_file, pixels, reference),
    }
    if result["fp16"]["execution_provider"] == "cuda":
        result["fp16_iobinding"] = io_binding(args.model_dir, manifest.fp16_file, pixels)
        result["fp32"] = onnx_runtime(args.model_dir, manifest.fp32_file, pixels, reference)
        if not args.no_torch:
            result["torch_eager_fp16"] = torch_eager_fp16(pixels)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
