"""The GPU path: `raiox model build --precision fp16` and RAIOX_EXECUTION_PROVIDER=cuda.

CI has no GPU: the fp16 graph is built and checked on the CPU (the test model is built with it),
CUDA requested without CUDA falls back to the same graph on the CPU and /healthcheck says so;
only `test_cuda_runs_the_fp16_graph` needs a GPU and skips without one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from appliance.cli.main import app as cli
from appliance.components import Components, load_encoder, open_components
from appliance.identification.encoder import Encoder
from appliance.identification.imaging import PreprocessParams, preprocess_batch
from appliance.identification.manifest import ModelManifest, ModelNotFoundError, file_sha256
from appliance.settings import EncoderSettings, Settings, SettingsError
from model.evaluate import synthetic_images
from tests.fixtures.appliance import asgi_client

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return preprocess_batch(synthetic_images(4, seed=77), PreprocessParams())


@pytest.fixture(scope="module")
def fp32_vectors(model_dir: Path, pixels: np.ndarray) -> np.ndarray:
    manifest = ModelManifest.load(model_dir)
    assert manifest.fp32_file
    return Encoder.load(model_dir, model_file=manifest.fp32_file).encode(pixels)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_build_writes_an_fp16_graph_faithful_to_fp32(model_dir: Path) -> None:
    m = ModelManifest.load(model_dir)
    assert m.fp16_file == "model.fp16.onnx"
    assert m.fp16_sha256 == file_sha256(model_dir / m.fp16_file)
    assert m.fp16_parity is not None and m.fp16_parity.images == m.parity.images
    assert m.fp16_parity.cosine_min >= 0.999
    # half the fp32 graph's size: the weights really are fp16
    assert m.fp32_file
    ratio = (model_dir / m.fp16_file).stat().st_size / (model_dir / m.fp32_file).stat().st_size
    assert 0.45 < ratio < 0.55
    assert ModelManifest.from_dict(json.loads((model_dir / "manifest.json").read_text())) == m
    result = CliRunner().invoke(cli, ["model", "info", str(model_dir)])
    assert "model.fp16.onnx (fp16)" in result.output and "fp16 parity" in result.output


def test_cuda_requested_without_cuda_runs_the_same_graph_on_the_cpu(
    model_dir: Path, pixels: np.ndarray, fp32_vectors: np.ndarray
) -> None:
    if HAS_CUDA:
        pytest.skip("this machine has CUDA: the fallback cannot happen")
    encoder = Encoder.load(model_dir, execution_provider="cuda")
    m = ModelManifest.load(model_dir)
    # the GPU graph's identity, not the int8 one's: the catalog stays consistent either way
    assert (encoder.graph, encoder.model_id) == ("fp16", m.fp16_sha256)
    assert (encoder.requested_provider, encoder.execution_provider) == ("cuda", "cpu")
    assert _cosines(encoder.encode(pixels), fp32_vectors).min() >= 0.999


def test_cpu_stays_the_default_and_runs_int8(model_dir: Path) -> None:
    encoder = Encoder.load(model_dir)
    assert (encoder.graph, encoder.execution_provider) == ("int8", "cpu")
    assert encoder.model_id == ModelManifest.load(model_dir).model_id


def test_a_model_without_a_gpu_graph(model_dir: Path, tmp_path: Path) -> None:
    """Older builds: fp32 serves CUDA; with no fp32 either, a clear error."""
    m = ModelManifest.load(model_dir)
    shutil.copy(model_dir / m.model_file, tmp_path)
    assert m.fp32_file
    shutil.copy(model_dir / m.fp32_file, tmp_path)
    old = {k: v for k, v in m.to_dict().items() if not k.startswith("fp16")}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    assert Encoder.load(tmp_path, execution_provider="cuda").graph == "fp32"
    old.update(fp32_file=None, fp32_sha256=None)
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ModelNotFoundError, match="--precision fp16"):
        Encoder.load(tmp_path, execution_provider="cuda")


def test_the_setting_is_checked() -> None:
    with pytest.raises(SettingsError, match="RAIOX_EXECUTION_PROVIDER"):
        Settings.from_env({"RAIOX_EXECUTION_PROVIDER": "tpu"}, env_file=Path("/nonexistent"))


async def test_healthcheck_says_where_the_model_runs(demo_components: Components) -> None:
    async with asgi_client(demo_components) as client:
        body = (await client.get("/healthcheck")).json()
    assert (body["model"]["graph"], body["model"]["execution_provider"]) == ("int8", "cpu")
    assert "int8 on CPU" in body["components"]["model"]["detail"]
    if HAS_CUDA:
        return
    settings = dataclasses.replace(
        demo_components.settings, encoder=EncoderSettings(execution_provider="cuda")
    )
    encoder = load_encoder(settings)
    async with open_components(settings, encoder=encoder) as comps, asgi_client(comps) as client:
        response = await client.get("/healthcheck")
    body = response.json()
    assert (body["model"]["graph"], body["model"]["execution_provider"]) == ("fp16", "cpu")
    model = body["components"]["model"]
    assert model["status"] == "degraded" and "RAIOX_EXECUTION_PROVIDER=cuda" in model["detail"]
    assert response.status_code == 200  # slower, not down


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_runs_the_fp16_graph(
    model_dir: Path, pixels: np.ndarray, fp32_vectors: np.ndarray
) -> None:
    encoder = Encoder.load(model_dir, execution_provider="cuda")
    assert (encoder.graph, encoder.execution_provider) == ("fp16", "cuda")
    assert _cosines(encoder.encode(pixels), fp32_vectors).min() >= 0.999
