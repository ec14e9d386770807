"""The model directory's manifest.json: what the model is, where its weights came from, how to
preprocess for it, and how faithful its int8 graph is to the fp32 one.

The build writes it; the runtime reads it and trusts nothing it cannot check (the model file's
hash is the model id every stored embedding carries).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import AppError
from appliance.identification.imaging import PreprocessParams

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ModelNotFoundError(AppError):
    status_code = 503
    code = "model_missing"


class ModelIntegrityError(AppError):
    status_code = 503
    code = "model_corrupt"


@dataclass(frozen=True)
class Quantization:
    method: str  # "dynamic": weights int8 offline, activations quantized per run
    weight_type: str  # "QInt8" or "QUInt8"
    per_channel: bool
    reduce_range: bool  # 7-bit weights: avoids u8s8 saturation on CPUs without VNNI
    op_types: tuple[str, ...]


@dataclass(frozen=True)
class Parity:
    """int8 against fp32 on the build's fixed synthetic image set."""

    cosine_mean: float
    cosine_min: float
    nn_agreement: float  # share of images whose nearest other image is the same in both
    images: int


@dataclass(frozen=True)
class ModelManifest:
    format_version: int
    architecture: str
    activation: str  # "quick_gelu" (what the OpenAI weights were trained with) or "gelu"
    weights: str  # "openai", "random", or "<checkpoint file name> sha256:<hex>"
    pretrained: bool
    seed: int | None  # the random-init seed, for "random" weights only
    model_id: str  # sha256 of model_file
    model_file: str
    fp32_file: str | None
    fp32_sha256: str | None
    embedding_dim: int
    preprocess: PreprocessParams
    quantization: Quantization
    parity: Parity
    opset: int
    created_at: str  # ISO 8601, UTC
    versions: dict[str, str]
    # The fp16 graph for GPUs (`raiox model build --precision fp16`); absent in CPU-only builds
    # and in manifests written before it existed.
    fp16_file: str | None = None
    fp16_sha256: str | None = None
    fp16_parity: Parity | None = None  # fp16 against fp32, same image set as `parity`

    @property
    def preprocess_params(self) -> PreprocessParams:
        return self.preprocess

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        path = model_dir / MANIFEST_NAME
        if not path.is_file():
            raise ModelNotFoundError(
                f"No model in {model_dir} (missing {MANIFEST_NAME}). Create one with "
                f"`raiox model build --out {model_dir}`."
            )
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"Unreadable {path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {data.get('format_version')!r}")
        fields = dict(data)
        pre = data["preprocess"]
        fields["preprocess"] = PreprocessParams(
            image_size=int(pre["image_size"]),
            mean=_triple(pre["mean"]),
            std=_triple(pre["std"]),
            interpolation=str(pre["interpolation"]),
            resize_mode=str(pre["resize_mode"]),
        )
        quant = dict(data["quantization"])
        quant["op_types"] = tuple(quant["op_types"])
        fields["quantization"] = Quantization(**quant)
        fields["parity"] = Parity(**data["parity"])
        if data.get("fp16_parity") is not None:
            fields["fp16_parity"] = Parity(**data["fp16_parity"])
        fields["versions"] = {str(k): str(v) for k, v in data["versions"].items()}
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, model_dir: Path) -> None:
        """Write through a temporary file so a reader never sees half a manifest."""
        tmp = model_dir / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, model_dir / MANIFEST_NAME)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _triple(values: list[float]) -> tuple[float, float, float]:
    first, second, third = (float(v) for v in values)
    return first, second, third


def format_manifest(m: ModelManifest) -> str:
    """Human-readable summary for `raiox model info`; an untrained model says so loudly."""
    banner = (
        ["!!! UNTRAINED (random weights) — demo/test only: similarities are meaningless !!!", ""]
        if not m.pretrained
        else []
    )
    q, p, pre = m.quantization, m.parity, m.preprocess
    fp32 = f"{m.fp32_file} (fp32)" if m.fp32_file else "no fp32 graph kept"
    fp16 = f", {m.fp16_file} (fp16)" if m.fp16_file else ""
    lines = [
        *banner,
        f"model id      {m.model_id}",
        f"architecture  {m.architecture} ({m.activation}), {m.embedding_dim}-d output",
        f"weights       {m.weights}" + (f" (seed {m.seed})" if m.seed is not None else ""),
        f"pretrained    {'yes' if m.pretrained else 'NO'}",
        f"files         {m.model_file} (int8), {fp32}{fp16}",
        f"quantization  {q.method} {q.weight_type}, per_channel={q.per_channel}, "
        f"reduce_range={q.reduce_range}",
        f"parity        cosine int8/fp32 mean {p.cosine_mean:.5f} min {p.cosine_min:.5f}, "
        f"nearest-neighbour agreement {p.nn_agreement:.3f} over {p.images} images",
        *(
            [
                f"fp16 parity   cosine fp16/fp32 mean {m.fp16_parity.cosine_mean:.5f} "
                f"min {m.fp16_parity.cosine_min:.5f}"
            ]
            if m.fp16_parity
            else []
        ),
        f"preprocess    {pre.image_size}px {pre.interpolation}, resize {pre.resize_mode}",
        f"onnx opset    {m.opset}",
        f"created       {m.created_at}",
        "versions      " + ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items())),
    ]
    return "\n".join(lines)
