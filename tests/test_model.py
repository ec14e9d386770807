"""The model toolchain and the runtime encoder, on the real ViT-B-32 with random weights."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.identification.encoder import Encoder
from appliance.identification.identify import decode_then_preprocess
from appliance.identification.imaging import (
    PreprocessParams,
    decode_image,
    preprocess,
    preprocess_batch,
)
from appliance.identification.manifest import (
    ModelIntegrityError,
    ModelManifest,
    ModelNotFoundError,
    file_sha256,
    format_manifest,
)
from appliance.settings import ImageLimits
from model.build import BuildError, build_model
from model.evaluate import parity, synthetic_images
from model.quantize import DEFAULT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parity_pixels() -> np.ndarray:
    return preprocess_batch(synthetic_images(64, seed=4321), PreprocessParams())


@pytest.fixture(scope="module")
def fp32_encoder(model_dir: Path) -> Encoder:
    manifest = ModelManifest.load(model_dir)
    assert manifest.fp32_file is not None
    return Encoder.load(model_dir, model_file=manifest.fp32_file)


def test_manifest_describes_the_build(model_dir: Path) -> None:
    m = ModelManifest.load(model_dir)
    assert (m.architecture, m.activation, m.embedding_dim, m.opset) == (
        "ViT-B-32",
        "quick_gelu",
        512,
        17,
    )
    assert (m.weights, m.pretrained, m.seed) == ("random", False, 0)
    assert m.model_id == file_sha256(model_dir / m.model_file)
    assert m.fp32_file and m.fp32_sha256 == file_sha256(model_dir / m.fp32_file)
    assert m.preprocess == m.preprocess_params == PreprocessParams()
    assert m.quantization == DEFAULT
    assert m.parity.images >= 50
    assert m.parity.cosine_mean >= 0.999 and m.parity.cosine_min >= 0.995
    assert m.parity.nn_agreement >= 0.96
    assert set(m.versions) == {"torch", "open_clip", "onnx", "onnxruntime"}
    assert datetime.fromisoformat(m.created_at).utcoffset() == timedelta(0)
    raw = json.loads((model_dir / "manifest.json").read_text())
    assert ModelManifest.from_dict(raw) == m


def test_info_text_flags_an_untrained_model(model_dir: Path) -> None:
    text = format_manifest(ModelManifest.load(model_dir))
    assert text.startswith("!!! UNTRAINED (random weights)")
    assert ModelManifest.load(model_dir).model_id in text


def test_encoder_exposes_the_manifest(encoder: Encoder, model_dir: Path) -> None:
    assert encoder.model_id == file_sha256(model_dir / "model.onnx")
    assert (encoder.pretrained, encoder.dim) == (False, 512)
    assert encoder.preprocess_params == PreprocessParams()


def test_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="raiox model build") as info:
        Encoder.load(tmp_path / "nowhere")
    assert (info.value.status_code, info.value.code) == (503, "model_missing")


def test_tampered_model_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(model_dir / "manifest.json", tmp_path)
    shutil.copy(model_dir / "model.onnx", tmp_path)
    with (tmp_path / "model.onnx").open("r+b") as fh:
        fh.seek(40_000_000)
        byte = fh.read(1)
        fh.seek(40_000_000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelIntegrityError) as info:
        Encoder.load(tmp_path)
    assert (info.value.status_code, info.value.code) == (503, "model_corrupt")


def test_unreadable_manifest_and_missing_graph(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format_version": 1, "architecture": ')
    with pytest.raises(ModelIntegrityError):
        ModelManifest.load(tmp_path)
    shutil.copy(model_dir / "manifest.json", tmp_path)
    with pytest.raises(ModelNotFoundError, match="missing"):
        Encoder.load(tmp_path)


def test_encode_rejects_wrong_shapes(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(np.zeros((1, 3, 112, 112), np.float32))


def test_jpegs_decoded_smaller_embed_like_the_full_decode(model_dir: Path) -> None:
    """Large JPEGs reach the model from libjpeg's reduced decode (imaging._reduce_while_decoding):
    the served int8 embedding must stay as close to the full decode's as int8 is to fp32."""
    encoder = Encoder.load(model_dir)
    sizes = [(4032, 3024), (3024, 4032), (1152, 864), (1600, 1200)]
    files = []
    for image, size in zip(synthetic_images(len(sizes), seed=99), sizes, strict=True):
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    limits, params = ImageLimits(), PreprocessParams()
    full = np.stack([preprocess(decode_image(data, limits).image, params) for data in files])
    served = np.stack([decode_then_preprocess(data, limits, params) for data in files])
    assert not np.array_equal(full, served)  # really a different decode
    cosines = np.sum(encoder.encode(full) * encoder.encode(served), axis=1)
    assert cosines.min() >= 0.999


def test_fp32_graph_matches_open_clip(model_dir: Path, fp32_encoder: Encoder) -> None:
    """Runtime path (numpy preprocessing + ORT) against open_clip's own transform + torch."""
    from model.export import embed_torch, load_clip

    m = ModelManifest.load(model_dir)
    assert m.seed is not None
    clip = load_clip("random", seed=m.seed, quick_gelu=m.activation == "quick_gelu")
    images = synthetic_images(6, seed=99)
    expected = embed_torch(clip, images)
    got = fp32_encoder.encode(preprocess_batch(images, m.preprocess))
    assert got.shape == (6, 512) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) < 1e-4


def test_int8_graph_has_no_integer_convolution(model_dir: Path) -> None:
    """The patch embedding is exported as a MatMul: as ConvInteger it cost a fifth of the
    model's time. Its correctness is the fp32 parity test above."""
    import onnx

    graph = onnx.load(str(model_dir / ModelManifest.load(model_dir).model_file)).graph
    ops = {node.op_type for node in graph.node}
    assert "ConvInteger" not in ops and "Conv" not in ops
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def test_int8_agrees_with_fp32(
    encoder: Encoder, fp32_encoder: Encoder, parity_pixels: np.ndarray
) -> None:
    """On a set the build never saw. Random-init embeddings cluster (nearest neighbours often
    only ~1e-3 apart), so a nearest neighbour may swap with a runner-up inside int8's noise:
    such swaps are allowed, any other is a real disagreement."""
    int8 = np.concatenate([encoder.encode(parity_pixels[i : i + 8]) for i in range(0, 64, 8)])
    fp32 = np.concatenate([fp32_encoder.encode(parity_pixels[i : i + 8]) for i in range(0, 64, 8)])
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    figures = parity(fp32, int8)
    assert figures.cosine_mean >= 0.999
    assert figures.cosine_min >= 0.995
    assert figures.nn_agreement >= 0.9
    similarity = fp32 @ fp32.T
    np.fill_diagonal(similarity, -np.inf)
    int8_similarity = int8 @ int8.T
    np.fill_diagonal(int8_similarity, -np.inf)
    rows = np.arange(len(fp32))
    gaps = similarity.max(axis=1) - similarity[rows, int8_similarity.argmax(axis=1)]
    assert np.max(gaps) < 2e-3


def test_batching_barely_changes_int8_and_not_fp32(
    encoder: Encoder, fp32_encoder: Encoder, parity_pixels: np.ndarray
) -> None:
    """Dynamic quantization scales activations over the whole batch, so an int8 embedding
    depends a little on its batch-mates (measured max |diff| ~3.5e-3, cosine >= 0.9997);
    fp32 does not. The same batch always gives the same result."""
    pixels = parity_pixels[:8]
    batched = encoder.encode(pixels)
    single = np.concatenate([encoder.encode(pixels[i : i + 1]) for i in range(8)])
    assert np.array_equal(batched, encoder.encode(pixels))
    assert np.min(np.sum(batched * single, axis=1)) >= 0.9995
    assert np.max(np.abs(batched - single)) < 1e-2
    fp32_batched = fp32_encoder.encode(pixels)
    fp32_single = np.concatenate([fp32_encoder.encode(pixels[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(fp32_batched, fp32_single, atol=1e-5)


def test_local_checkpoint_is_recorded_by_name_and_hash(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from model.export import WeightsUnavailableError, embed_torch, load_clip

    original = load_clip("random", seed=5, quick_gelu=True)
    path = tmp_path / "tuned.safetensors"
    save_file(original.model.state_dict(), str(path))
    loaded = load_clip(str(path), seed=0, quick_gelu=True)
    assert loaded.weights == f"tuned.safetensors sha256:{file_sha256(path)}"
    assert loaded.pretrained
    images = synthetic_images(2)
    assert np.array_equal(embed_torch(loaded, images), embed_torch(original, images))
    torch.save({"not": torch.zeros(1)}, tmp_path / "junk.pt")
    with pytest.raises(WeightsUnavailableError, match=r"junk\.pt"):
        load_clip(str(tmp_path / "junk.pt"), seed=0, quick_gelu=True)


def test_build_refuses_to_replace_other_data(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(BuildError, match="not a model directory"):
        build_model("random", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_openai_weights_offline_fail_fast_and_leave_nothing(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from model.build import WeightsUnavailableError, build_model\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    build_model('openai', Path(sys.argv[1]))\n"
        "except WeightsUnavailableError as exc:\n"
        "    print(f'{time.monotonic() - start:.3f}', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "models" / "current"
    result = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seconds, message = result.stdout.split(" ", 1)
    assert float(seconds) < 5
    assert "HF_HUB_OFFLINE" in message and "internet access" in message and "PATH" in message
    assert not (tmp_path / "models").exists()


def test_encoder_import_does_not_load_torch() -> None:
    code = (
        "import sys, appliance.identification.encoder, appliance.identification.manifest\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'model') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
