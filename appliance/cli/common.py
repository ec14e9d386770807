"""What every `raiox` command shares: reading Settings, failing with one line, running a
coroutine, printing an identification. The command modules import this one, never each other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer

from appliance.errors import AppError
from appliance.settings import Settings, SettingsError

T = TypeVar("T")


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def run(job: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; an AppError becomes a one-line message, not a traceback."""
    try:
        return asyncio.run(job())  # type: ignore[arg-type]
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
