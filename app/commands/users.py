"""``omniclinic users add|passwd|disable|list``: accounts for the web app and the API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.commands.common import EXIT_USAGE, fail, open_app_database

users_cli = typer.Typer(
    name="users", help="Manage the accounts that log in to the web app and the API.", no_args_is_help=True
)


def _password(confirm: bool) -> str:
    """From a prompt (typed twice), or one line of standard input when it is piped."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise fail("no password on standard input", EXIT_USAGE)
        return line.rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)


def _run(action) -> None:  # type: ignore[no-untyped-def]
    from app.core.security import WeakPassword
    from app.services.users import UserError

    try:
        action()
    except (UserError, WeakPassword) as exc:
        raise fail(str(exc), EXIT_USAGE) from None


@users_cli.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, '.', '_', '-').")],
    role: Annotated[str, typer.Option(help="clinician, researcher, auditor or admin.")],
) -> None:
    """Add a user; the password is read from a prompt, or from standard input when piped (one line)."""
    from app.services.auditing import Actor
    from app.services.users import add_user

    password = _password(confirm=True)
    engine = open_app_database()
    _run(lambda: add_user(engine, name, role, password, Actor.at_command_line()))
    typer.echo(f"added {name} ({role})")


@users_cli.command("passwd")
def passwd(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Set a new password; logins made with the old one end."""
    from app.services.auditing import Actor
    from app.services.users import set_password

    password = _password(confirm=True)
    engine = open_app_database()
    _run(lambda: set_password(engine, name, password, Actor.at_command_line()))
    typer.echo(f"password changed for {name}")


@users_cli.command("disable")
def disable(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Disable a user: they can no longer log in, and their current logins end."""
    from app.services.auditing import Actor
    from app.services.users import disable_user

    engine = open_app_database()
    _run(lambda: disable_user(engine, name, Actor.at_command_line()))
    typer.echo(f"disabled {name}")


@users_cli.command("list")
def list_cmd() -> None:
    """List user names, roles and whether they are disabled."""
    from app.services.users import list_users

    for name, role, disabled in list_users(open_app_database()):
        typer.echo("\t".join([name, role, *(["disabled"] if disabled else [])]))
