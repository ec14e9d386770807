"""Load CLIP ViT-B/32 with open_clip and export its image tower to ONNX.

Only the image tower ships: the appliance never encodes text, and dropping the text tower
halves the file and the memory the runtime maps.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import open_clip
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

from appliance.identification.manifest import file_sha256

ARCHITECTURE = "ViT-B-32"
OPSET = 17
EMBEDDING_DIM = 512
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embedding"

_OPENAI_TAG = "openai"
_HUB_HOST = "huggingface.co"


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be obtained on this machine."""


@dataclass(frozen=True)
class LoadedClip:
    """A CLIP model in eval mode plus what the manifest needs to say about where it came from."""

    model: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    weights: str  # "openai", "random", or "<file name> sha256:<hex>" for a local checkpoint
    pretrained: bool


class ImageTower(torch.nn.Module):
    """The visual encoder with the L2 normalization inside the graph, so every consumer of the
    ONNX file gets unit vectors and cosine similarity is a plain dot product."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.visual = cast(torch.nn.Module, clip.visual)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.visual(pixel_values)
        return torch.nn.functional.normalize(features, dim=-1)


class PatchEmbedding(torch.nn.Module):
    """ViT's patch convolution (kernel = stride = patch size, no padding) as a reshape and a
    matrix product: the same numbers (max difference 2e-6 in fp32), a faster int8 graph.

    quantize_dynamic turns a Conv into ConvInteger, which ORT runs far slower per
    multiply-add than the DynamicQuantizeMatMul a MatMul becomes: the patch convolution took
    20% of the int8 model's time (54 of 271 ms for a batch of 8, 1 thread); as a MatMul the
    whole model runs 19% faster (32.9 -> 26.7 ms per image) at the same int8-fp32 cosine."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        out_channels, in_channels, patch, _ = conv.weight.shape
        if conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.groups != 1:
            raise ValueError("only a non-overlapping patch convolution can be a MatMul")
        self.patch = patch
        self.out_channels = out_channels
        self.linear = torch.nn.Linear(
            in_channels * patch * patch, out_channels, bias=conv.bias is not None
        )
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.reshape(out_channels, -1))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows, cols = h // self.patch, w // self.patch
        patches = (
            x.reshape(n, c, rows, self.patch, cols, self.patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(n, rows * cols, c * self.patch * self.patch)
        )
        # Back to the convolution's [n, channels, rows, cols] for the rest of the tower.
        tokens: torch.Tensor = self.linear(patches)
        return tokens.permute(0, 2, 1).reshape(n, self.out_channels, rows, cols)


@contextmanager
def _patch_embedding_as_matmul(visual: torch.nn.Module) -> Iterator[None]:
    """Swap the patch convolution for the time of the export; the caller's model is unchanged."""
    conv = cast(torch.nn.Conv2d, visual.conv1)
    visual.conv1 = PatchEmbedding(conv)
    try:
        yield
    finally:
        visual.conv1 = conv


def load_clip(weights: str, *, seed: int, quick_gelu: bool) -> LoadedClip:
    """Build ViT-B-32 from the OpenAI weights, a local checkpoint file, or a fixed random seed.

    QuickGELU is the activation the OpenAI weights were trained with; open_clip 3 no longer
    switches it on for the `openai` tag by itself, and without it the embeddings drift."""
    if weights == "random":
        torch.manual_seed(seed)
        return _create(None, "random", False, quick_gelu)
    if weights == _OPENAI_TAG:
        return _create(_download_openai_weights(), _OPENAI_TAG, True, quick_gelu)
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"--weights {weights!r} is neither 'openai', 'random' nor an existing checkpoint file."
        )
    try:
        return _create(str(path), f"{path.name} sha256:{file_sha256(path)}", True, quick_gelu)
    except Exception as exc:  # torch.load, safetensors and strict state-dict loading all differ
        raise WeightsUnavailableError(
            f"Cannot load {path.name} as an open_clip {ARCHITECTURE} checkpoint ({exc}). Use a "
            "state dict (.safetensors or .bin), e.g. open_clip_model.safetensors from the hub "
            "repository timm/vit_base_patch32_clip_224.openai; TorchScript archives are refused."
        ) from exc


def _create(checkpoint: str | None, label: str, pretrained: bool, quick_gelu: bool) -> LoadedClip:
    model, _, transform = open_clip.create_model_and_transforms(
        ARCHITECTURE, pretrained=checkpoint, force_quick_gelu=quick_gelu
    )
    model.eval()
    return LoadedClip(model, transform, label, pretrained)


def embed_torch(clip: LoadedClip, images: list[Image.Image]) -> np.ndarray:
    """Reference embeddings straight from open_clip (its own transform, eager fp32)."""
    encode = cast(Callable[[torch.Tensor], torch.Tensor], clip.model.encode_image)
    pixels = torch.stack([clip.transform(image) for image in images])
    with torch.no_grad():
        vectors: np.ndarray = torch.nn.functional.normalize(encode(pixels), dim=-1).numpy()
    return vectors


def _download_openai_weights() -> str:
    """Fetch the OpenAI checkpoint, or find it in the hub cache; never fall back to random.

    Without a network the hub client retries for most of a minute, so reachability is probed
    first and, when the hub cannot be reached, only the local cache is consulted."""
    cfg = open_clip.get_pretrained_cfg(ARCHITECTURE, _OPENAI_TAG)
    reason = "HF_HUB_OFFLINE is set" if _offline_env() else None
    if reason is None and not _reachable(_HUB_HOST):
        reason = f"{_HUB_HOST} is unreachable"
    try:
        with _hub_offline(reason is not None):
            path: str = open_clip.download_pretrained(cfg)
    except Exception as exc:
        detail = f"{reason}; not in the local hub cache" if reason else f"{exc!r}"
        raise WeightsUnavailableError(
            f"Cannot obtain the OpenAI CLIP {ARCHITECTURE} weights ({detail}). Build the "
            "model on a machine with internet access and copy the model directory here, or "
            "copy the checkpoint file here and pass its PATH: --weights /path/to/checkpoint."
        ) from exc
    return path


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _reachable(host: str, timeout_s: float = 5.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """The hub client reads HF_HUB_OFFLINE once, at import; switch its flag for one call."""
    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = offline or saved
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def export_image_tower(clip: torch.nn.Module, path: Path) -> None:
    """Write the image tower as ONNX with a dynamic batch axis.

    The TorchScript exporter is used: it is the one whose graph quantize_dynamic is known to
    handle here, and it needs no onnxscript at build time."""
    tower = ImageTower(clip).eval()
    example = torch.zeros(1, 3, 224, 224)
    # MultiheadAttention's inference fast path is a fused op the exporter cannot translate.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # The tracer warns about shape checks in MultiheadAttention that are constant for
        # ViT-B-32 (fixed width and head count); the dynamic batch axis is unaffected.
        with _patch_embedding_as_matmul(tower.visual), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            torch.onnx.export(
                tower,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
