"""`raiox` — the operator's command line. Every command reads the same Settings as the server
and runs the same use cases, so what works here works behind HTTP."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from appliance.cli_submissions import submissions_app
from appliance.cli_sync import sync_app
from appliance.errors import AppError
from appliance.logs import configure_logging
from appliance.settings import Settings, SettingsError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
model_app = typer.Typer(no_args_is_help=True, help="Build and inspect the ONNX model.")
catalog_app = typer.Typer(no_args_is_help=True, help="Load the reference implant catalog.")
app.add_typer(model_app, name="model")
app.add_typer(catalog_app, name="catalog")
app.add_typer(submissions_app, name="submissions")
app.add_typer(sync_app, name="sync")

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _run(job: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; an AppError becomes a one-line message, not a traceback."""
    try:
        return asyncio.run(job())  # type: ignore[arg-type]
    except AppError as exc:
        _fail(exc.detail)


@model_app.command("build")
def model_build(
    out: Annotated[Path, typer.Option(help="Model directory to create")] = Path("models/current"),
    weights: Annotated[str, typer.Option(help="openai | random | PATH to a checkpoint")] = "openai",
    fp32: Annotated[bool, typer.Option(help="Keep the fp32 graph beside the int8 one")] = True,
) -> None:
    """Export CLIP ViT-B/32's image tower to ONNX and quantize it to int8 (needs the
    `export` extra: torch, open_clip)."""
    try:
        from model.build import BuildError, WeightsUnavailableError, build_model
    except ImportError:
        _fail("model building needs the export extra: pip install 'raiox-appliance[export]'")
    try:
        manifest = build_model(weights, out, keep_fp32=fp32, progress=lambda m: typer.echo(m))
    except (WeightsUnavailableError, BuildError) as exc:
        _fail(str(exc))
    from appliance.manifest import format_manifest

    typer.echo(format_manifest(manifest))


@model_app.command("info")
def model_info(model_dir: Path) -> None:
    """Print a model directory's manifest."""
    from appliance.manifest import ModelManifest, format_manifest

    try:
        typer.echo(format_manifest(ModelManifest.load(model_dir)))
    except AppError as exc:
        _fail(exc.detail)


@app.command()
def migrate() -> None:
    """Apply pending database migrations (the server also does it at start)."""
    from appliance.database import Database

    async def job() -> None:
        db = await Database.open(_settings())
        await db.close()

    _run(job)
    typer.echo("migrations applied")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Serve the HTTP API (uvicorn).

    Settings are checked here, then uvicorn replaces this process: the server then holds only
    the app's imports, not the CLI's (the sync worker's botocore alone is ~40 MB)."""
    settings = _settings()
    args = [sys.executable, "-m", "uvicorn", "appliance.asgi:app", "--proxy-headers"]
    args += ["--host", host or settings.host, "--port", str(port or settings.port)]
    args += ["--workers", str(workers), "--log-level", "info"]
    os.execv(sys.executable, args)


@app.command()
def identify(
    images: Annotated[list[Path], typer.Argument(help="Radiograph files")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Identify the implant in one or more radiographs, as /upload would."""
    from appliance.api.schemas import IdentificationOut
    from appliance.components import build_components
    from appliance.submissions import Submitter

    async def job() -> list[IdentificationOut]:
        comps = await build_components(_settings())
        try:
            results = []
            for path in images:
                sub = await comps.identifier.identify_upload(
                    path.read_bytes(), source="cli", submitter=Submitter()
                )
                results.append(_result_out(comps, sub))
            return results
        finally:
            await comps.close()

    results = _run(job)
    if as_json:
        import msgspec

        typer.echo(msgspec.json.encode(results).decode())
        return
    for path, result in zip(images, results, strict=True):
        _print_result(str(path), result)


@catalog_app.command("import")
def catalog_import(manifest: Path) -> None:
    """Import implants and reference images from a CSV or JSON manifest (idempotent)."""
    from appliance.catalog_import import read_manifest

    try:
        specs = read_manifest(manifest)
    except AppError as exc:
        _fail(exc.detail)
    _import(specs)


@catalog_app.command("demo")
def catalog_demo(
    views: Annotated[int, typer.Option(min=1, max=8, help="Reference views per implant")] = 3,
) -> None:
    """Load the SYNTHETIC demo catalog (32 rendered implants): for demos and tests only."""
    from appliance.catalog_import import demo_specs

    typer.secho("Loading the synthetic demo catalog (not real implants).", fg="yellow", err=True)
    _import(demo_specs(views))


@catalog_app.command("reembed")
def catalog_reembed() -> None:
    """Re-embed every reference made by another model with the current one."""
    from appliance.catalog_import import reembed_catalog
    from appliance.components import build_components

    async def job() -> int:
        comps = await build_components(_settings())
        try:
            return await reembed_catalog(
                catalog=comps.catalog, embedder=comps.embedder, store=comps.store
            )
        finally:
            await comps.close()

    count = _run(job)
    typer.echo(f"re-embedded {count} reference images")


@app.command()
def demo(
    port: Annotated[int | None, typer.Option()] = None,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve")] = True,
) -> None:
    """Build a random-weight model if none exists, load the demo catalog, serve, and identify
    a sample radiograph over HTTP. Everything it shows is labelled synthetic/untrained."""
    settings = _settings()
    if not (settings.model_dir / "manifest.json").is_file():
        typer.secho("No model found: building an UNTRAINED random-weight model.", fg="yellow")
        model_build(out=settings.model_dir, weights="random", fp32=False)
    catalog_demo(views=3)
    port = port or settings.port
    server, thread = _start_server(settings, port)
    try:
        _identify_sample(settings.host, port)
        if serve_after:
            typer.echo(f"Serving on http://{settings.host}:{port} (docs at /docs); Ctrl-C stops.")
            while thread.is_alive():
                thread.join(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True  # let the lifespan close the pool before Postgres stops
        thread.join(30)


def _start_server(settings: Settings, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    from appliance.app import create_app

    configure_logging()
    config = uvicorn.Config(create_app(settings), host=settings.host, port=port, log_level="info")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            _fail("the server did not start; see the log above")
        time.sleep(0.1)
    return server, thread


def _identify_sample(host: str, port: int) -> None:
    import httpx

    from appliance.api.schemas import IdentificationOut
    from appliance.demo_catalog import DEMO_IMPLANTS, png_bytes, render_patient_sample

    implant = DEMO_IMPLANTS[5]
    sample = png_bytes(render_patient_sample(implant, seed=7))
    response = httpx.post(
        f"http://{host}:{port}/upload",
        files={"file": ("sample.png", sample, "image/png")},
        data={"dente": "36"},
        timeout=60,
    )
    if response.status_code != 200:
        _fail(f"sample identification failed: {response.status_code} {response.text}")
    import msgspec

    result = msgspec.json.decode(response.content, type=IdentificationOut)
    _print_result(f"synthetic sample of {implant.name}", result)


def _result_out(comps: Any, sub: Any) -> Any:
    from appliance.api.schemas import ModelOut, identification_out

    model = ModelOut(id=comps.encoder.model_id, pretrained=comps.encoder.pretrained)
    return identification_out(sub, model, (comps.settings.public_base_url or "").rstrip("/"))


def _print_result(label: str, result: Any) -> None:
    typer.echo(f"\n{label}: {result.status} (submission {result.submission_id})")
    if not result.model.pretrained:
        typer.secho("  model is UNTRAINED (random weights): ranks are meaningless", fg="yellow")
    for m in result.matches:
        tag = " [synthetic]" if m.implant.synthetic else ""
        typer.echo(
            f"  {m.rank}. {m.implant.name} — {m.implant.manufacturer} ({m.implant.type})"
            f"  similarity {m.similarity:.3f}{tag}"
        )
    if result.error:
        typer.echo(f"  error: {result.error}")


def _import(specs: Any) -> None:
    from appliance.catalog_import import import_catalog
    from appliance.components import build_components

    async def job() -> Any:
        comps = await build_components(_settings())
        try:
            return await import_catalog(
                specs,
                pool=comps.database.pool,
                catalog=comps.catalog,
                embedder=comps.embedder,
                store=comps.store,
            )
        finally:
            await comps.close()

    report = _run(job)
    typer.echo(
        f"{report.implants} implants; {report.embedded} reference images embedded, "
        f"{report.skipped} already present"
    )


def main() -> int:
    try:
        app()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
