"""fp32 ONNX -> int8 with onnxruntime's dynamic quantization.

Weights: signed int8, per output channel, with `reduce_range` (7-bit). Cosine of int8 to fp32
embeddings (mean / min, 64 synthetic images), ms per image at batch 1 on 2 threads:

  weights                 random-init ViT-B-32                     same, channel scales
                          VNNI (native)         AVX2 (qemu)        ~ lognormal(0, 0.8)
  QInt8                   0.99981/0.99978 15 ms  0.978/0.977        -
  QInt8 reduce_range      0.99955/0.99946 14 ms  0.99954/0.99944    0.9892/0.9866
  QInt8 rr per-channel    0.99970/0.99963 15 ms  0.99969/0.99963    0.9982/0.9976
  QUInt8                  0.99982/0.99978 32 ms  0.99982/0.99979    0.9965/0.9953
  QUInt8 per-channel      0.99986/0.99982 33 ms  -                  0.9985/0.9975

Plain QInt8 saturates in VPMADDUBSW on CPUs without VNNI; reduce_range avoids that and keeps
ORT's fast u8s8 kernels (QUInt8 weights have no VNNI kernel: twice as slow here). Trained
weights have uneven channel ranges, which per-tensor scales handle badly (last column, a
stand-in for them), so scales are per channel. quant_pre_process fails on this graph.
"""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from appliance.identification.manifest import Quantization

DEFAULT = Quantization(
    method="dynamic",
    weight_type="QInt8",
    per_channel=True,
    reduce_range=True,
    op_types=("Conv", "Gemm", "MatMul"),
)


def quantize_int8(fp32_path: Path, int8_path: Path, q: Quantization = DEFAULT) -> Quantization:
    """Write the int8 graph; return the settings used, for the manifest."""
    if q.method != "dynamic":
        raise ValueError(f"unsupported quantization method {q.method!r}")
    quantize_dynamic(
        fp32_path,
        int8_path,
        op_types_to_quantize=list(q.op_types),
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        weight_type=QuantType[q.weight_type],
    )
    return q
