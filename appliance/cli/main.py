"""`raiox` — the operator's command line. Every command reads the same Settings as the server
and runs the same use cases, so what works here works behind HTTP."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.cli.admin import admin_app, evaluate
from appliance.cli.apikey import apikey_app
from appliance.cli.backup import backup, restore
from appliance.cli.catalog import catalog_app, catalog_demo
from appliance.cli.common import fail, load_settings, print_result, with_components
from appliance.cli.model import model_app, model_build
from appliance.cli.retention import retention_app
from appliance.cli.submissions import submissions_app
from appliance.cli.sync import sync_app
from appliance.errors import AppError
from appliance.logs import configure_logging
from appliance.settings import Settings

if TYPE_CHECKING:
    from appliance.components import Components

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(model_app, name="model")
app.add_typer(catalog_app, name="catalog")
app.add_typer(submissions_app, name="submissions")
app.add_typer(sync_app, name="sync")
app.add_typer(retention_app, name="retention")
app.command()(backup)
app.command()(restore)
app.add_typer(apikey_app, name="apikey")
app.add_typer(admin_app, name="admin")
app.command("evaluate")(evaluate)


@app.command()
def migrate() -> None:
    """Apply pending database migrations and name each one applied. One process at a time (an
    advisory lock): the deploy runs this before the api replicas start, whose own start-up
    pass then finds nothing to do."""
    import asyncio

    from appliance.database import migrate as apply_pending

    try:
        applied = asyncio.run(apply_pending(load_settings()))
    except AppError as exc:
        fail(exc.detail)
    typer.echo(f"applied {', '.join(applied)}" if applied else "no pending migrations")


@app.command()
def doctor() -> None:
    """Reconcile image files with their rows (also done at every start) and report; exits 1
    when something needed attention."""
    from appliance.doctor import reconcile

    report = with_components(lambda comps: reconcile(comps.database.pool, comps.store))
    for line in report.lines():
        typer.echo(line)
    for key in report.rows_without_files[:20]:
        typer.echo(f"  missing: {key}")
    if not report.clean:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Serve the HTTP API (uvicorn, with connection limits: see appliance.server).

    Settings are checked here, then the server replaces this process: it then holds only
    the app's imports, not the CLI's (the sync worker's botocore alone is ~40 MB)."""
    settings = load_settings()
    args = [sys.executable, "-m", "appliance.server"]
    args += ["--host", host or settings.server.host, "--port", str(port or settings.server.port)]
    args += ["--workers", str(workers)]
    os.execv(sys.executable, args)


@app.command()
def identify(
    images: Annotated[list[Path], typer.Argument(help="Radiograph files")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Identify the implant in one or more radiographs, as /upload would."""
    from appliance.api.schemas import IdentificationOut
    from appliance.submissions import Source, Submitter

    async def job(comps: Components) -> list[IdentificationOut]:
        results = []
        for path in images:
            sub = await comps.identifier.identify_upload(
                path.read_bytes(), source=Source.CLI, submitter=Submitter()
            )
            results.append(_result_out(comps, sub))
        return results

    results = with_components(job)
    if as_json:
        import msgspec

        typer.echo(msgspec.json.encode(results).decode())
        return
    for path, result in zip(images, results, strict=True):
        print_result(str(path), result)


@app.command()
def demo(
    port: Annotated[int | None, typer.Option()] = None,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve")] = True,
) -> None:
    """Build a random-weight model if none exists, load the demo catalog, serve, and identify
    a sample radiograph over HTTP. Everything it shows is labelled synthetic/untrained.
    It serves with open access (no API keys) on its own host, as `make run` sets."""
    settings = load_settings()
    settings = dataclasses.replace(
        settings, access=dataclasses.replace(settings.access, open_access=True)
    )
    if not (settings.model_dir / "manifest.json").is_file():
        typer.secho("No model found: building an UNTRAINED random-weight model.", fg="yellow")
        model_build(out=settings.model_dir, weights="random", fp32=False)
    catalog_demo(views=3)
    port = port or settings.server.port
    server, thread = _start_server(settings, port)
    try:
        _identify_sample(settings.server.host, port)
        if serve_after:
            typer.echo(
                f"Serving on http://{settings.server.host}:{port} (docs at /docs); Ctrl-C stops."
            )
            # Ctrl-C (and SIGTERM, turned into it) sets an event rather than raising
            # KeyboardInterrupt inside Thread.join: interrupting join's lock wait can leave the
            # thread's state inconsistent, and the process then hangs instead of stopping.
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
            while thread.is_alive() and not stop.wait(1):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True  # let the lifespan close the pool before Postgres stops
        thread.join(30)


def _start_server(settings: Settings, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    from appliance.app import create_app
    from appliance.server import uvicorn_config

    configure_logging()
    config = uvicorn_config(create_app(settings), settings, host=settings.server.host, port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            fail("the server did not start; see the log above")
        time.sleep(0.1)
    return server, thread


def _identify_sample(host: str, port: int) -> None:
    import httpx

    from appliance.api.schemas import IdentificationOut
    from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_patient_sample

    implant = DEMO_IMPLANTS[5]
    sample = png_bytes(render_patient_sample(implant, seed=7))
    response = httpx.post(
        f"http://{host}:{port}/upload",
        files={"file": ("sample.png", sample, "image/png")},
        data={"dente": "36"},
        timeout=60,
    )
    if response.status_code != 200:
        fail(f"sample identification failed: {response.status_code} {response.text}")
    import msgspec

    result = msgspec.json.decode(response.content, type=IdentificationOut)
    print_result(f"synthetic sample of {implant.name}", result)


def _result_out(comps: Any, sub: Any) -> Any:
    from appliance.api.schemas import ModelOut, identification_out

    model = ModelOut(id=comps.encoder.model_id, pretrained=comps.encoder.pretrained)
    return identification_out(sub, model, (comps.settings.server.public_base_url or "").rstrip("/"))


def _sigterm_as_ctrl_c(_signum: int, _frame: object) -> None:
    """SIGTERM (systemd, make, docker stop) gets what Ctrl-C gets: finally blocks and exit
    handlers run, so the embedded Postgres is left (and stopped by its last user) instead of
    being orphaned by Python's default of dying on the spot."""
    signal.raise_signal(signal.SIGINT)


def main() -> int:
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        app()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
