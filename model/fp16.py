"""fp32 ONNX -> fp16, the graph a GPU runs (`raiox model build --precision fp16`).

Inputs and outputs stay float32 (`keep_io_types`), so the appliance feeds and reads every graph
the same way. fp16 is for CUDA: ONNX Runtime's CPU provider runs it slowly, and with its full
graph optimisation (NCHWc layout transforms) onnxruntime 1.32 crashes loading it, so CPU
sessions of this graph use the extended level (`SAFE_CPU_OPTIMIZATION`).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import convert_float_to_float16

SAFE_CPU_OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def convert_fp16(fp32_path: Path, fp16_path: Path) -> None:
    """Write the fp16 graph of `fp32_path`."""
    graph = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(graph, str(fp16_path))
