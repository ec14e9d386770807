"""`raiox retention run [--dry-run] [--days N]`: erase the personal data of submissions older
than N days now (appliance.retention), as the periodic runs do, and print the counts as JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from appliance.cli.common import fail, load_settings, with_components
from appliance.logs import configure_logging

retention_app = typer.Typer(
    no_args_is_help=True, help="Patient-data retention (RAIOX_RETENTION_DAYS)."
)


@retention_app.command("run")
def run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be erased; change nothing")
    ] = False,
    days: Annotated[int | None, typer.Option(min=1, help="Default: RAIOX_RETENTION_DAYS")] = None,
) -> None:
    """Erase images (local and Spaces) and personal fields of submissions older than N days;
    the submission rows, matches and labels stay. Prints the counts as JSON."""
    settings = load_settings()
    days = days or settings.retention.days
    if not days:
        fail("the retention is off: set RAIOX_RETENTION_DAYS or pass --days")
    configure_logging()  # the run's log line goes to stderr with the others
    wanted = days
    report = with_components(lambda comps: comps.retention.run(wanted, dry_run=dry_run), settings)
    typer.echo(json.dumps(report.as_json()))
