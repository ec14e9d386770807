"""`raiox sync`: the replication worker and its operator commands (status, requeue, prune).
The worker also runs the patient-data retention when it is on (appliance.retention)."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from typing import TYPE_CHECKING, Annotated

import typer

from appliance.cli.common import fail, load_settings, with_components
from appliance.logs import configure_logging
from appliance.progress import Progress
from appliance.settings import Settings

if TYPE_CHECKING:  # botocore is heavy: loaded by the commands that talk to Spaces
    from appliance.components import Components
    from appliance.sync.spaces import SpacesClient
    from appliance.sync.worker import PassResult, PruneReport, Replicator

sync_app = typer.Typer(help="Replicate local images to Spaces.")


def _settings(*, spaces: bool) -> Settings:
    settings = load_settings()
    if spaces and not settings.spaces.enabled:
        typer.secho("Replication is off: set RAIOX_SPACES_* to enable it.", fg="yellow", err=True)
        raise typer.Exit(0)
    return settings


def _spaces(comps: Components) -> SpacesClient:
    assert comps.spaces is not None, "checked by _settings(spaces=True)"
    return comps.spaces


def _replicator(comps: Components) -> Replicator:
    from appliance.sync.worker import Replicator

    return Replicator(comps.outbox, comps.store, _spaces(comps), comps.settings.sync)


@sync_app.callback(invoke_without_command=True)
def sync(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Drain what is due, then exit")] = False,
) -> None:
    """Run the replication worker (several may run at once; each item is uploaded once).

    With replication off and a metrics port set, the worker still runs and exports the local
    backlog, so Prometheus sees it up and the operator sees what is kept on this disk only."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    idle = not settings.spaces.enabled and settings.sync.metrics_port is not None and not once
    if not idle:
        settings = _settings(spaces=True)
    if once:
        result = with_components(lambda c: _replicator(c).run_once(progress=Progress), settings)
        _report_pass(result)
        return
    configure_logging()
    log = logging.getLogger(__name__)

    async def worker(comps: Components) -> None:
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        server = None
        if settings.sync.metrics_port is not None:
            from appliance.sync import metrics as sync_metrics

            server, _ = sync_metrics.serve(settings.server.host, settings.sync.metrics_port)
            await sync_metrics.refresh(comps.outbox)
        retention = _start_retention(comps)
        try:
            if idle:
                log.warning("replication is off (no RAIOX_SPACES_*): exporting the backlog only")
                await _export_backlog_forever(comps, settings.sync.poll_seconds)
            else:
                replicator = _replicator(comps)
                log.info("replication worker %s started", replicator.worker_id)
                await replicator.run_forever(
                    settings.sync.poll_seconds, settings.sync.local_retention_days
                )
        except asyncio.CancelledError:  # SIGTERM: leases of unfinished items simply expire
            log.info("replication worker stopped")
        finally:
            if retention is not None:
                retention.cancel()
                with suppress(asyncio.CancelledError):
                    await retention
            if server is not None:
                server.shutdown()

    with_components(worker, settings)


def _start_retention(comps: Components) -> asyncio.Task[None] | None:
    """The patient-data retention runs in the worker too (once an hour among every process
    that runs it), so it runs wherever a long-lived process does."""
    retention = comps.settings.retention
    if not retention.enabled:
        return None
    from appliance.retention import retention_forever

    return asyncio.create_task(retention_forever(comps.retention, retention.days))


async def _export_backlog_forever(comps: Components, poll_seconds: float) -> None:
    from appliance.sync import metrics as sync_metrics

    while True:
        await asyncio.sleep(max(poll_seconds, 15.0))
        try:
            await sync_metrics.refresh(comps.outbox)
        except Exception as exc:  # the database is away: the next round tries again
            logging.getLogger(__name__).warning("backlog refresh failed (%s)", type(exc).__name__)


def _report_pass(result: PassResult) -> None:
    typer.echo(f"replicated {result.replicated}; failed {result.failed} (raiox sync status)")
    if result.unavailable:
        typer.secho(f"Spaces unavailable, stopped early: {result.unavailable}", fg="yellow")
        raise typer.Exit(1)


@sync_app.command("status")
def status() -> None:
    """Backlog, oldest pending item, last error and dead letters."""
    settings = _settings(spaces=False)
    s = with_components(lambda comps: comps.outbox.status(), settings)
    state = "on" if settings.spaces.enabled else "OFF (no RAIOX_SPACES_* settings)"
    typer.echo(f"replication {state}")
    typer.echo(f"pending {s.pending} (due now {s.due}); replicated {s.done}; pruned {s.pruned}")
    if s.oldest_pending is not None and s.oldest_pending_age_seconds is not None:
        age = _duration(s.oldest_pending_age_seconds)
        typer.echo(f"oldest pending since {s.oldest_pending:%Y-%m-%d %H:%M:%S %Z} ({age} ago)")
    if s.last_error:
        typer.echo(f"last error: {s.last_error}")
    typer.echo(f"dead letters {len(s.dead)}" + (" (raiox sync requeue)" if s.dead else ""))
    for dead in s.dead:
        typer.echo(f"  {dead.storage_key}  attempts={dead.attempts}  {dead.last_error or ''}")


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"


@sync_app.command("requeue")
def requeue(
    keys: Annotated[list[str] | None, typer.Argument(help="Storage keys (default: all)")] = None,
) -> None:
    """Give dead letters a fresh set of attempts."""
    settings = _settings(spaces=False)
    count = with_components(lambda comps: comps.outbox.requeue_dead(keys or None), settings)
    typer.echo(f"requeued {count} objects")


@sync_app.command("prune")
def prune(
    days: Annotated[
        int | None, typer.Option(min=1, help="Default: RAIOX_LOCAL_RETENTION_DAYS")
    ] = None,
) -> None:
    """Delete local copies of patient images replicated and older than N days (each checked
    in Spaces first); they are then served through presigned Spaces links."""
    settings = _settings(spaces=True)
    days = days or settings.sync.local_retention_days
    if days is None:
        fail("pass --days or set RAIOX_LOCAL_RETENTION_DAYS")
    from appliance.sync.spaces import is_unavailable
    from appliance.sync.worker import prune_local

    retention = days

    async def job(comps: Components) -> PruneReport:
        spaces = _spaces(comps)
        try:
            return await prune_local(comps.outbox, comps.store, spaces, retention, Progress)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            fail(f"Spaces unreachable, nothing pruned: {spaces.redact(str(exc))}")

    report = with_components(job, settings)
    if report.busy:
        fail("a replication worker is pruning right now; nothing pruned, try again later")
    typer.echo(f"pruned {report.pruned} local copies ({report.bytes_freed / 2**20:.1f} MiB)")
    if report.requeued:
        typer.secho(
            f"{report.requeued} were not intact in Spaces: kept and queued again", fg="yellow"
        )
