"""`raiox sync`: the replication worker and its operator commands."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from appliance.database import Database
from appliance.progress import Progress
from appliance.replication import Replicator, SpacesClient, requeue_dead, sync_status
from appliance.settings import Settings
from appliance.storage import LocalImageStore

sync_app = typer.Typer(help="Replicate local images to Spaces.")
T = TypeVar("T")


def _with_database(job: Callable[[Database, Settings], Awaitable[T]]) -> T:
    settings = Settings.from_env()

    async def run() -> T:
        database = await Database.open(settings)
        try:
            return await job(database, settings)
        finally:
            await database.close()

    return asyncio.run(run())


@sync_app.callback(invoke_without_command=True)
def sync(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Drain what is due, then exit")] = False,
) -> None:
    """Run the replication worker (safe to run several at once)."""
    if ctx.invoked_subcommand is not None:
        return

    async def job(database: Database, settings: Settings) -> int:
        if not settings.spaces_enabled:
            typer.secho("Replication is off: set RAIOX_SPACES_* to enable it.", fg="yellow")
            return 0
        replicator = Replicator(
            database.pool,
            LocalImageStore(settings.images_dir),
            SpacesClient(settings),
            max_attempts=settings.sync_max_attempts,
        )
        if once:
            return await replicator.run_once(progress=Progress)
        await replicator.run_forever(settings.sync_poll_seconds)
        return 0

    count = _with_database(job)
    if once:
        typer.echo(f"replicated {count} objects")


@sync_app.command("status")
def status() -> None:
    """Backlog, oldest pending item and dead letters."""

    async def job(database: Database, settings: Settings) -> None:
        s = await sync_status(database.pool)
        state = "on" if settings.spaces_enabled else "OFF (no RAIOX_SPACES_* settings)"
        typer.echo(f"replication {state}")
        typer.echo(f"pending {s.pending} (due now {s.due}), replicated {s.done}")
        typer.echo(f"oldest pending since {s.oldest_pending or '-'}")
        typer.echo(f"dead letters {len(s.dead)}" + (" (raiox sync requeue)" if s.dead else ""))
        for key, attempts, error in s.dead:
            typer.echo(f"  {key}  attempts={attempts}  {error or ''}")

    _with_database(job)


@sync_app.command("requeue")
def requeue() -> None:
    """Give dead letters a fresh set of attempts."""

    async def job(database: Database, settings: Settings) -> int:
        return await requeue_dead(database.pool)

    typer.echo(f"requeued {_with_database(job)} objects")
