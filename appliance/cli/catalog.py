"""`raiox catalog`: load the reference implant catalog (import, demo, reembed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.cli.common import fail, with_components
from appliance.errors import AppError

if TYPE_CHECKING:
    from appliance.components import Components

catalog_app = typer.Typer(no_args_is_help=True, help="Load the reference implant catalog.")


@catalog_app.command("import")
def catalog_import(manifest: Path) -> None:
    """Import implants and reference images from a CSV or JSON manifest (idempotent)."""
    from appliance.catalog.importer import read_manifest

    try:
        specs = read_manifest(manifest)
    except AppError as exc:
        fail(exc.detail)
    _import(specs)


@catalog_app.command("demo")
def catalog_demo(
    views: Annotated[int, typer.Option(min=1, max=8, help="Reference views per implant")] = 3,
) -> None:
    """Load the SYNTHETIC demo catalog (32 rendered implants): for demos and tests only."""
    from appliance.catalog.importer import demo_specs

    typer.secho("Loading the synthetic demo catalog (not real implants).", fg="yellow", err=True)
    _import(demo_specs(views))


@catalog_app.command("reembed")
def catalog_reembed() -> None:
    """Re-embed every reference made by another model with the current one."""
    from appliance.catalog.importer import reembed_catalog

    async def job(comps: Components) -> int:
        return await reembed_catalog(
            catalog=comps.catalog, embedder=comps.embedder, store=comps.store
        )

    count = with_components(job)
    typer.echo(f"re-embedded {count} reference images")


def _import(specs: Any) -> None:
    async def job(comps: Components) -> Any:
        return await comps.import_catalog(specs)

    report = with_components(job)
    typer.echo(
        f"{report.implants} implants; {report.embedded} reference images embedded, "
        f"{report.skipped} already present"
    )
