"""The ONNX Runtime image encoder: one session, checked against its manifest before use.

Only onnxruntime and numpy here, never torch, so a serving process stays small. ORT sessions
may be run from several threads at once.

Dynamic int8 quantization scales activations per run, over the whole batch: an image's
embedding therefore depends slightly on the images batched with it (measured cosine >= 0.9997
between batch-1 and batch-8 results, well inside the int8-vs-fp32 error). The fp32 graph is
batch-invariant.

RAIOX_EXECUTION_PROVIDER=cuda runs the GPU graph (fp16, else fp32) on onnxruntime's CUDA
provider. Its model id is that graph's hash, so the catalog is embedded by the same graph. When
CUDA is not there (CPU-only onnxruntime, no driver) the same graph runs on the CPU, slowly but
with the same answers, and the encoder says so (`requested_provider` vs `execution_provider`):
falling back to the int8 graph would change the model id and strand the catalog.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.identification.imaging import PreprocessParams
from appliance.identification.manifest import (
    ModelIntegrityError,
    ModelManifest,
    ModelNotFoundError,
    file_sha256,
)

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class Encoder:
    def __init__(
        self,
        manifest: ModelManifest,
        session: ort.InferenceSession,
        model_id: str,
        *,
        graph: str = "int8",
        requested_provider: str = "cpu",
    ):
        self.manifest = manifest
        self.model_id = model_id  # sha256 of the graph in use: embeddings carry it
        self.graph = graph  # "int8", "fp16" or "fp32"
        self.requested_provider = requested_provider
        # What really runs the graph: "cuda" only if ORT placed the session on it.
        self.execution_provider = (
            "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        )
        self._session = session
        self._input = session.get_inputs()[0].name
        self._shape = (3, manifest.preprocess.image_size, manifest.preprocess.image_size)

    @property
    def pretrained(self) -> bool:
        return self.manifest.pretrained

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def preprocess_params(self) -> PreprocessParams:
        return self.manifest.preprocess

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        model_file: str | None = None,
        execution_provider: str = "cpu",
    ) -> Encoder:
        """Load the int8 graph (CPU) or the GPU graph (CUDA), or with `model_file` another graph
        the manifest lists (for parity checks and benchmarks); its hash is verified either way."""
        if execution_provider not in PROVIDERS:
            raise ValueError(f"unknown execution provider {execution_provider!r}")
        manifest = ModelManifest.load(model_dir)
        expected = _graphs(manifest)
        name = model_file or _default_graph(manifest, execution_provider)
        if name not in expected:
            raise ModelNotFoundError(f"{name} is not a graph listed in {model_dir}'s manifest.")
        path = model_dir / name
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path} is missing; rebuild the model with `raiox model build --out {model_dir}`."
            )
        graph, sha256 = expected[name]
        if file_sha256(path) != sha256:
            raise ModelIntegrityError(
                f"{path} does not match its manifest (sha256 differs): the file is damaged or was "
                "replaced; rebuild the model or restore the directory."
            )
        _pin_mmap_threshold()
        options = _session_options(intra_op_threads, inter_op_threads)
        if graph == "fp16":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=_providers(execution_provider)
        )
        encoder = cls(manifest, session, sha256, graph=graph, requested_provider=execution_provider)
        if encoder.execution_provider != execution_provider:
            log.error(
                "RAIOX_EXECUTION_PROVIDER=%s but onnxruntime cannot use it (available: %s); "
                "running the %s graph on the CPU, slowly",
                execution_provider,
                ", ".join(ort.get_available_providers()),
                graph,
            )
        return encoder

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [n, 3, size, size] -> float32 [n, dim], unit length."""
        if pixels.ndim != 4 or pixels.shape[1:] != self._shape:
            raise ValueError(f"expected pixels of shape [n, *{self._shape}], got {pixels.shape}")
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        vectors: np.ndarray = self._session.run(None, {self._input: batch})[0]
        return vectors


def _graphs(manifest: ModelManifest) -> dict[str, tuple[str, str]]:
    """File name -> (precision, sha256) of every graph the manifest lists."""
    graphs = {manifest.model_file: ("int8", manifest.model_id)}
    if manifest.fp32_file and manifest.fp32_sha256:
        graphs[manifest.fp32_file] = ("fp32", manifest.fp32_sha256)
    if manifest.fp16_file and manifest.fp16_sha256:
        graphs[manifest.fp16_file] = ("fp16", manifest.fp16_sha256)
    return graphs


def _default_graph(manifest: ModelManifest, execution_provider: str) -> str:
    """int8 on CPU; on a GPU, fp16 or else fp32 (dynamic int8 runs mostly on the CPU there)."""
    if execution_provider == "cpu":
        return manifest.model_file
    gpu_graph = manifest.fp16_file or manifest.fp32_file
    if gpu_graph is None:
        raise ModelNotFoundError(
            "RAIOX_EXECUTION_PROVIDER=cuda needs a GPU graph, and this model has neither fp16 "
            "nor fp32: rebuild it with `raiox model build --precision fp16`."
        )
    return gpu_graph


def _providers(execution_provider: str) -> list[str]:
    """CUDA first when asked and present; the CPU provider always, for what CUDA cannot run."""
    available = ort.get_available_providers()
    wanted = dict.fromkeys((PROVIDERS[execution_provider], PROVIDERS["cpu"]))
    return [p for p in wanted if p in available]


def _pin_mmap_threshold() -> None:
    """Keep large allocations in mmap so that freeing them returns the memory at once.

    glibc raises its mmap threshold after a large block is freed; ORT's load-time buffers then
    land on the heap and ~50 MB of them is never returned. Measured after loading the int8
    model: 152 or 204 MB RSS depending on thread timing, 151 MB every time with a fixed
    threshold, at unchanged latency. Not glibc (e.g. musl): nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def _session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT's warnings about unused initializers are noise here
    # The arena keeps a batch's activation buffers between runs. Without it every run maps
    # and faults in ~30 MB afresh (~940 page faults per image; the model's threads contend with
    # the decoding threads for the process's memory map): at concurrency 16, server CPU per
    # image measured 112-127 ms with it against 140 without (tests/bench/http.py, 2 runs
    # each, interleaved, on a shared box), for 274 instead of 260 MB peak RSS.
    options.enable_cpu_mem_arena = True
    # ORT's pool threads spin for a while after each op by default: on two cores they take
    # the CPU from decoding and preprocessing of the next requests. Measured with the HTTP
    # benchmark at concurrency 16: 50 instead of 59-71 ms of server CPU per request.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
