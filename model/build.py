"""`raiox model build`: CLIP ViT-B/32's image tower -> ONNX fp32 -> int8 (and, for GPUs, fp16),
plus manifest.json.

Build time only (torch, open_clip, onnx). The directory appears complete or not at all: it is
assembled in a hidden sibling directory and renamed into place, and any failure removes it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.identification.imaging import PreprocessParams, preprocess_batch
from appliance.identification.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ModelManifest,
    Parity,
    file_sha256,
)
from model.evaluate import parity, synthetic_images
from model.export import (
    ARCHITECTURE,
    EMBEDDING_DIM,
    INPUT_NAME,
    OPSET,
    LoadedClip,
    WeightsUnavailableError,
    embed_torch,
    export_image_tower,
    load_clip,
)
from model.fp16 import SAFE_CPU_OPTIMIZATION, convert_fp16
from model.quantize import quantize_int8

__all__ = ["BuildError", "WeightsUnavailableError", "build_model"]

MODEL_FILE = "model.onnx"
FP32_FILE = "model.fp32.onnx"
FP16_FILE = "model.fp16.onnx"
# ONNX fp32 against open_clip torch, max |difference| of unit vectors; more means a bad export.
EXPORT_TOLERANCE = 1e-4
# What int8 should reach against fp32 (a warning, not a failure: the operator decides).
PARITY_MEAN, PARITY_MIN = 0.999, 0.995
# fp16 rounds, it does not quantize: anything below this is a broken conversion.
FP16_PARITY_MIN = 0.999


class BuildError(RuntimeError):
    """The build produced something that must not be installed, or cannot be installed."""


def build_model(
    weights: str,
    out_dir: Path,
    *,
    keep_fp32: bool = True,
    fp16: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    quick_gelu: bool = True,
) -> ModelManifest:
    """Build a model directory from `weights`: "openai", "random" (seeded; offline tests and
    demos) or a local open_clip checkpoint file. An existing model directory is replaced.
    `fp16` also writes the graph a GPU runs (RAIOX_EXECUTION_PROVIDER=cuda).

    `quick_gelu` must match the weights: True for OpenAI's (and checkpoints fine-tuned from
    them), False for most LAION ones. Random builds use it too so they run the production graph.
    """
    say = progress or (lambda _message: None)
    started = time.monotonic()
    out_dir = out_dir.resolve()
    _check_replaceable(out_dir)
    say(f"loading {ARCHITECTURE} weights: {weights}")
    clip = load_clip(weights, seed=seed, quick_gelu=quick_gelu)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        manifest = _build_in(
            work, clip, keep_fp32=keep_fp32, fp16=fp16, seed=seed, quick_gelu=quick_gelu, say=say
        )
        _install(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"built {out_dir} in {time.monotonic() - started:.0f} s")
    return manifest


def _build_in(
    work: Path,
    clip: LoadedClip,
    *,
    keep_fp32: bool,
    fp16: bool,
    seed: int,
    quick_gelu: bool,
    say: Callable[[str], None],
) -> ModelManifest:
    fp32_path, int8_path = work / FP32_FILE, work / MODEL_FILE
    say(f"exporting the image tower to ONNX (opset {OPSET})")
    export_image_tower(clip.model, fp32_path)
    _check_export(clip, fp32_path)
    say("quantizing to int8")
    quantization = quantize_int8(fp32_path, int8_path)
    say("measuring int8 against fp32")
    figures = measure_parity(fp32_path, int8_path, PreprocessParams())
    say(
        f"parity: cosine mean {figures.cosine_mean:.5f}, min {figures.cosine_min:.5f}, "
        f"nearest-neighbour agreement {figures.nn_agreement:.3f}"
    )
    if figures.cosine_mean < PARITY_MEAN or figures.cosine_min < PARITY_MIN:
        say(f"WARNING: int8 parity below cosine mean {PARITY_MEAN} / min {PARITY_MIN}")
    fp16_parity = _build_fp16(fp32_path, work / FP16_FILE, say) if fp16 else None
    fp32_sha = file_sha256(fp32_path) if keep_fp32 else None
    if not keep_fp32:
        fp32_path.unlink()
    manifest = ModelManifest(
        format_version=FORMAT_VERSION,
        architecture=ARCHITECTURE,
        activation="quick_gelu" if quick_gelu else "gelu",
        weights=clip.weights,
        pretrained=clip.pretrained,
        seed=None if clip.pretrained else seed,
        model_id=file_sha256(int8_path),
        model_file=MODEL_FILE,
        fp32_file=FP32_FILE if keep_fp32 else None,
        fp32_sha256=fp32_sha,
        embedding_dim=EMBEDDING_DIM,
        preprocess=PreprocessParams(),
        quantization=quantization,
        parity=figures,
        opset=OPSET,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        versions={name: version(dist) for name, dist in _VERSIONED.items()},
        fp16_file=FP16_FILE if fp16 else None,
        fp16_sha256=file_sha256(work / FP16_FILE) if fp16 else None,
        fp16_parity=fp16_parity,
    )
    manifest.write(work)
    return manifest


_VERSIONED = {
    "torch": "torch",
    "open_clip": "open_clip_torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}


def _build_fp16(fp32_path: Path, fp16_path: Path, say: Callable[[str], None]) -> Parity:
    say("converting to fp16 (GPU graph)")
    convert_fp16(fp32_path, fp16_path)
    pixels = preprocess_batch(synthetic_images(), PreprocessParams())
    figures = parity(
        run_graph(fp32_path, pixels), run_graph(fp16_path, pixels, level=SAFE_CPU_OPTIMIZATION)
    )
    say(f"fp16 parity: cosine mean {figures.cosine_mean:.5f}, min {figures.cosine_min:.5f}")
    if figures.cosine_min < FP16_PARITY_MIN:
        raise BuildError(f"fp16 graph differs from fp32 (cosine min {figures.cosine_min:.5f})")
    return figures


def _check_export(clip: LoadedClip, fp32_path: Path) -> None:
    """Compare the exported graph with open_clip itself on a few images, so an exporter
    regression fails the build instead of shipping subtly wrong embeddings."""
    images = synthetic_images(4, seed=7)
    pixels = np.stack([clip.transform(image).numpy() for image in images])
    error = float(np.max(np.abs(run_graph(fp32_path, pixels) - embed_torch(clip, images))))
    if error > EXPORT_TOLERANCE:
        raise BuildError(
            f"ONNX export differs from open_clip by {error:.2e} (> {EXPORT_TOLERANCE})"
        )


def measure_parity(fp32_path: Path, int8_path: Path, params: PreprocessParams) -> Parity:
    """int8 vs fp32 on the fixed synthetic set, preprocessed exactly as the appliance does."""
    pixels = preprocess_batch(synthetic_images(), params)
    return parity(run_graph(fp32_path, pixels), run_graph(int8_path, pixels))


def run_graph(
    path: Path,
    pixels: np.ndarray,
    batch: int = 8,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> np.ndarray:
    """Embed with a bare session: at build time there is no manifest to load an Encoder from."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    chunks = [
        session.run(None, {INPUT_NAME: pixels[i : i + batch].astype(np.float32)})[0]
        for i in range(0, len(pixels), batch)
    ]
    return np.concatenate(chunks)


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty directory or an earlier model directory may be replaced: a typo in --out
    must not delete someone's data."""
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file()
    ):
        raise BuildError(f"{out_dir} exists and is not a model directory; refusing to replace it.")


def _install(work: Path, out_dir: Path) -> None:
    """Swap the finished build in with renames, so readers see the old or the new model."""
    work.chmod(0o755)  # mkdtemp makes it 0700
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
        out_dir.rename(old)
    work.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
