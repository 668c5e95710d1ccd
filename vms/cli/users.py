"""`vms users`: accounts of the control console and API keys. Passwords come from a prompt or stdin,
never from the command line (it would stay in the shell history and the process list)."""

from __future__ import annotations

import sys
from enum import StrEnum

import typer
from sqlalchemy import select

from vms.api.accounts import AccountError, create_api_key, create_user, set_disabled, set_password
from vms.api.permissions import API_KEY_SCOPES
from vms.cli.context import database, fail
from vms.core.clock import default_clock
from vms.db.models import User

app = typer.Typer(help="Console users and API keys: create, list, disable, set-password, api-key.",
                  no_args_is_help=True)
api_key_app = typer.Typer(help="API keys with limited scopes (audit jobs, metric scrapers).", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    auditor = "auditor"
    viewer = "viewer"


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise fail("--password-stdin given but standard input is empty")
        return line.rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _towns(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


@app.command()
def create(
    username: str = typer.Argument(..., help="login name"),
    role: Role = typer.Option(..., "--role", help="admin | operator | auditor | viewer"),
    towns: str | None = typer.Option(None, "--towns", help="comma-separated town names; omit for all towns"),
    display_name: str | None = typer.Option(None, "--display-name"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
) -> None:
    """Create a user (the first admin is made this way)."""
    password = _read_password(password_stdin)
    try:
        with database().session() as s:
            create_user(s, username, password, role.value, default_clock().now_ms(), towns=_towns(towns),
                        display_name=display_name)
    except AccountError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"created {role.value} {username}" + (f" (towns: {towns})" if towns else ""))


@app.command("list")
def list_() -> None:
    """Users with role, towns and state."""
    with database().session() as s:
        users = list(s.scalars(select(User).order_by(User.username)))
    if not users:
        typer.echo("no users yet: vms users create <name> --role admin")
        return
    for u in users:
        towns = ",".join(u.towns) if u.towns else "all towns"
        state = "disabled" if u.disabled else "active"
        typer.echo(f"{u.username:<20} {u.role:<9} {state:<9} {towns}")


@app.command()
def disable(username: str, enable: bool = typer.Option(False, "--enable", help="enable again instead")) -> None:
    """Disable a user (their sessions and keys stop working at once), or --enable again."""
    try:
        with database().session() as s:
            set_disabled(s, username, not enable)
    except AccountError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{username} {'enabled' if enable else 'disabled'}")


@app.command("set-password")
def set_password_(
    username: str,
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
) -> None:
    """Set a new password; the user's open sessions end."""
    password = _read_password(password_stdin)
    try:
        with database().session() as s:
            set_password(s, username, password)
    except AccountError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"password of {username} changed")


@api_key_app.command("create")
def api_key_create(
    username: str = typer.Argument(..., help="the key acts as this user, narrowed to its scopes"),
    name: str = typer.Option(..., "--name", help="what the key is for, e.g. audit-cron"),
    scope: list[str] = typer.Option(..., "--scope", help=f"repeatable: {', '.join(sorted(API_KEY_SCOPES))}"),
    days: float | None = typer.Option(None, "--days", min=0.001, help="lifetime; default until revoked"),
) -> None:
    """Create an API key; the key is printed once and only its hash is kept."""
    try:
        with database().session() as s:
            secret, tok = create_api_key(s, username, name, scope, default_clock().now_ms(), days=days)
    except AccountError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"API key {tok.id} ({name}, scopes {', '.join(tok.scopes or [])}) for {username}:", err=True)
    typer.echo(secret)
