"""The ``omniclinic`` command: the entry point for everything.

Subcommands appear here only when they work. Errors a user can fix are printed as one line on
stderr with a non-zero exit status (2 for usage and settings errors), never as a traceback.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Annotated

import typer

from app import __version__
from app.commands.errors import EXIT_USAGE
from app.commands.errors import fail as _fail
from app.core.config import Settings, SettingsError, load_settings
from app.core.privacy import protect_patient_data_in_logs

cli = typer.Typer(
    name="omniclinic",
    help="Self-hostable omni-modal clinical assistant. Not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: object) -> Settings:
    try:
        settings = load_settings()
        if overrides:
            settings = Settings.model_validate(settings.model_dump() | {k: v for k, v in overrides.items() if v})
    except SettingsError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except ValueError as exc:  # pydantic's ValidationError for an override
        raise _fail(
            f"invalid option: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}", EXIT_USAGE
        ) from None
    return settings


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"omniclinic {__version__}")
        raise typer.Exit()


@cli.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """omniclinic: DICOM studies, voice questions, spoken answers, every access audited."""
    protect_patient_data_in_logs()


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _prepare_database(settings: Settings) -> None:
    """Reach the database and bring the audit tables up to date, or stop: no audit trail, no service."""
    from app.core.db import database_ok, make_engine
    from audit import upgrade_database

    engine = make_engine(settings.database_url.get_secret_value())
    try:
        ok, reason = database_ok(engine)
        if not ok:
            raise _fail(f"cannot reach the database ({reason}); check OMNICLINIC_DATABASE_URL")
        try:
            upgrade_database(engine)
        except Exception as exc:  # a migration that cannot run: say which kind of failure, no traceback
            raise _fail(f"cannot prepare the audit tables ({type(exc).__name__})") from None
    finally:
        engine.dispose()


@cli.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: OMNICLINIC_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: OMNICLINIC_PORT or 7860]", min=1, max=65535)] = None,
) -> None:
    """Run the clinician web app."""
    import uvicorn

    from app.main import create_app

    settings = _settings(host=host, port=port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings.prepare_data_dir()
        settings.resolve_secret_key()
    except SettingsError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    _prepare_database(settings)
    if _port_in_use(settings.host, settings.port):
        raise _fail(f"{settings.host}:{settings.port} is already in use; choose another with --port")
    typer.echo(f"omniclinic {__version__} on http://{settings.host}:{settings.port}  (data: {settings.data_dir})")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


@cli.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report versions, models and engines found, and what is missing with its fix.

    Exits 0 when the default path can run, 1 when something it needs is missing.
    """
    from app.doctor import report_as_dicts, run_checks

    checks = run_checks(_settings())
    blocking = [check for check in checks if check.blocking]
    if as_json:
        typer.echo(
            json.dumps({"version": __version__, "ok": not blocking, "checks": report_as_dicts(checks)}, indent=2)
        )
    else:
        marks = {
            "ok": typer.style("ok  ", fg=typer.colors.GREEN),
            "warning": typer.style("warn", fg=typer.colors.YELLOW),
        }
        for check in checks:
            mark = marks.get(check.status) or typer.style(
                "MISS" if check.required else "--  ", fg=typer.colors.RED if check.required else typer.colors.YELLOW
            )
            kind = "" if check.required else " (optional)"
            typer.echo(f"{mark} {check.name}{kind}: {check.detail}")
            if check.status != "ok" and check.fix:
                typer.echo(f"       fix: {check.fix}")
        verdict = "the default path can run" if not blocking else f"{len(blocking)} required item(s) missing"
        typer.echo(f"omniclinic {__version__}: {verdict}")
    if blocking:
        raise typer.Exit(1)


def current_settings() -> Settings:
    """Settings for a subcommand, with errors turned into a usage exit (no traceback)."""
    return _settings()


def _register_data_commands() -> None:
    from app.commands import data

    cli.command()(data.deid)
    cli.command()(data.ingest)
    cli.command()(data.inspect)

    from app.commands import speech

    cli.command()(speech.transcribe)
    cli.command()(speech.speak)

    from app.commands import model

    cli.command("model-info")(model.model_info)
    cli.command("convert-whisper")(model.convert_whisper)

    from app.commands import train

    cli.command("make-conversations")(train.make_conversations)
    cli.command()(train.train)
    cli.command()(train.retrain)

    from app.commands.audit import audit_cli

    cli.add_typer(audit_cli)


_register_data_commands()


def main() -> None:
    """Run the CLI; failures the user cannot fix in the command line become one line, not a traceback."""
    import os

    from sqlalchemy.exc import SQLAlchemyError

    try:
        cli(standalone_mode=True)
    except SQLAlchemyError as exc:
        if os.environ.get("OMNICLINIC_DEBUG") == "1":
            raise
        typer.secho(
            f"error: the database failed ({type(exc.orig or exc).__name__}); check OMNICLINIC_DATABASE_URL "
            "and that the server is up (OMNICLINIC_DEBUG=1 shows details)",
            err=True,
            fg=typer.colors.RED,
        )
        raise SystemExit(1) from None
    except Exception as exc:
        if os.environ.get("OMNICLINIC_DEBUG") == "1":
            raise
        typer.secho(
            f"error: unexpected {type(exc).__name__}; rerun with OMNICLINIC_DEBUG=1 for details",
            err=True,
            fg=typer.colors.RED,
        )
        raise SystemExit(1) from None
