"""`raiox model`: build and inspect the ONNX model."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import fail
from appliance.errors import AppError


class Precision(StrEnum):
    int8 = "int8"
    fp16 = "fp16"


model_app = typer.Typer(no_args_is_help=True, help="Build and inspect the ONNX model.")


@model_app.command("build")
def model_build(
    out: Annotated[Path, typer.Option(help="Model directory to create")] = Path("models/current"),
    weights: Annotated[str, typer.Option(help="openai | random | PATH to a checkpoint")] = "openai",
    fp32: Annotated[bool, typer.Option(help="Keep the fp32 graph beside the int8 one")] = True,
    precision: Annotated[
        Precision,
        typer.Option(help="int8: the CPU graph only; fp16: also the GPU graph (CUDA provider)"),
    ] = Precision.int8,
) -> None:
    """Export CLIP ViT-B/32's image tower to ONNX and quantize it to int8 (needs the
    `export` extra: torch, open_clip). The int8 graph is always built: CPU stays the default."""
    try:
        from model.build import BuildError, WeightsUnavailableError, build_model
    except ImportError:
        fail("model building needs the export extra: pip install 'raiox-appliance[export]'")
    try:
        manifest = build_model(
            weights,
            out,
            keep_fp32=fp32,
            fp16=precision is Precision.fp16,
            progress=lambda m: typer.echo(m),
        )
    except (WeightsUnavailableError, BuildError) as exc:
        fail(str(exc))
    from appliance.identification.manifest import format_manifest

    typer.echo(format_manifest(manifest))


@model_app.command("info")
def model_info(model_dir: Path) -> None:
    """Print a model directory's manifest."""
    from appliance.identification.manifest import ModelManifest, format_manifest

    try:
        typer.echo(format_manifest(ModelManifest.load(model_dir)))
    except AppError as exc:
        fail(exc.detail)
