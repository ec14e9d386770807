"""What every `raiox` command shares: reading Settings, running a job on the components (one
`async with` opens and closes them), failing with one line, printing an identification. The
command modules import this one, never each other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from appliance.errors import AppError
from appliance.settings import Settings, SettingsError

if TYPE_CHECKING:
    from appliance.components import Components

T = TypeVar("T")


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def with_components(
    job: Callable[[Components], Awaitable[T]], settings: Settings | None = None
) -> T:
    """Run `job` on the appliance's components, built from settings (read from the environment
    unless given) and closed afterwards; an AppError becomes a one-line message."""
    from appliance.components import open_components

    settings = settings or load_settings()

    async def run() -> T:
        async with open_components(settings) as components:
            return await job(components)

    try:
        return asyncio.run(run())
    except AppError as exc:
        fail(exc.detail)


def print_result(label: str, result: Any) -> None:
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
