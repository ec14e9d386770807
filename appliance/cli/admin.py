"""`raiox admin create-user` (staff accounts for the console) and `raiox evaluate` (top-1/top-3
agreement on labelled data, or a leave-one-out over the catalog)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from appliance.cli.common import with_components

if TYPE_CHECKING:
    from appliance.accuracy import Scores
    from appliance.components import Components

UNTRAINED_WARNING = (
    "warning: the model is UNTRAINED (random weights): these figures measure nothing clinical"
)
admin_app = typer.Typer(no_args_is_help=True, help="Staff accounts of the /admin console.")


@admin_app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="Username (lowercase letters, digits, . _ -)")],
    role: Annotated[str, typer.Option(help="admin | staff")] = "staff",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create a console account; the password is asked twice unless --password-stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def job(comps: Components) -> None:
        await comps.accounts.create_user(name, password, role, actor="cli")

    with_components(job)
    typer.echo(f"created {role} {name.strip().lower()}")


def evaluate(
    labels: Annotated[
        Path | None, typer.Argument(help="CSV with columns image, implant (default: LOO)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Top-1/top-3 agreement: on a labelled CSV, or leave-one-out over the catalog."""
    from appliance.catalog.evaluate import format_scores, from_labels, leave_one_out

    async def job(comps: Components) -> Scores:
        if not comps.encoder.pretrained:
            typer.secho(UNTRAINED_WARNING, fg="yellow", err=True)
        if labels is None:
            return await leave_one_out(comps.database.pool, comps.encoder.model_id)
        return await from_labels(
            labels, pool=comps.database.pool, catalog=comps.catalog, embedder=comps.embedder
        )

    scores = with_components(job)
    typer.echo(json.dumps(scores.as_json()) if as_json else format_scores(scores))
