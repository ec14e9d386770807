"""`raiox apikey create NAME | list | revoke NAME`: the keys of the closed-by-default API."""

from __future__ import annotations

import typer

from appliance.apikeys import ApiKey
from appliance.cli.common import with_components

apikey_app = typer.Typer(no_args_is_help=True, help="API keys (Authorization: Bearer).")


@apikey_app.command("create")
def create(name: str) -> None:
    """Make a key; it is printed once, on stdout, and only its hash is kept."""
    key, secret = with_components(lambda comps: comps.api_keys.create(name))
    typer.echo(f"key {key.name!r} (id {key.id}), shown only this once:", err=True)
    typer.echo(secret)


@apikey_app.command("list")
def list_keys() -> None:
    """Keys with their first characters, creation, last use and revocation."""
    keys: list[ApiKey] = with_components(lambda comps: comps.api_keys.list())
    if not keys:
        typer.echo("no API keys (make one with `raiox apikey create NAME`)")
    for key in keys:
        used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        typer.echo(
            f"{key.id:>4}  {key.name:<24} {key.prefix}…  created {key.created_at:%Y-%m-%d}  "
            f"last used {used}  {state}"
        )


@apikey_app.command("revoke")
def revoke(name: str) -> None:
    """Revoke the active key NAME (servers stop accepting it within 10 s)."""
    key_id = with_components(lambda comps: comps.api_keys.revoke(name))
    typer.echo(f"revoked key {name!r} (id {key_id})")
