"""`raiox submissions retry`: process failed form submissions again from what was kept (the
image on disk, or its upload URL), the same way a redelivered webhook would."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated

import typer

from appliance.cli.common import fail, with_components

if TYPE_CHECKING:
    from appliance.components import Components

submissions_app = typer.Typer(no_args_is_help=True, help="Form submissions kept by the appliance.")


@submissions_app.command("retry")
def retry(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Submission ids (default: every failed one)")
    ] = None,
) -> None:
    """Retry failed submissions; exits 1 while any of them still fails."""
    try:
        wanted = [uuid.UUID(value) for value in ids or []]
    except ValueError:
        fail("submission ids are UUIDs, as printed by the API and this command")

    async def job(comps: Components) -> list[str]:
        targets = wanted or await comps.submissions.failed_ids()
        if not targets:
            typer.echo("no failed submissions")
        still_failing = []
        for n, submission_id in enumerate(targets, start=1):
            outcome = await comps.intake.retry(submission_id)
            if outcome is None:
                line = "skipped (not failed, or being processed)"
            else:
                line = outcome.submission.status
                if outcome.submission.status != "done":
                    line += f": {outcome.submission.error}"
                    still_failing.append(str(submission_id))
            typer.echo(f"[{n}/{len(targets)}] {submission_id} {line}")
        return still_failing

    if with_components(job):
        raise typer.Exit(1)
