"""The ``omniclinic`` command: the entry point for everything.

Subcommands appear here only when they work. Errors a user can fix are printed as one line on
stderr with a non-zero exit status (2 for usage and settings errors), never as a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app import __version__
from app.core.privacy import protect_patient_data_in_logs

cli = typer.Typer(
    name="omniclinic",
    help="Self-hostable omni-modal clinical assistant. Not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


def _register_commands() -> None:
    """Every subcommand, from ``app/commands`` (which never import this module)."""
    from app.commands import ask, data, drafting, model, serve, speech, train
    from app.commands.audit import audit_cli
    from app.commands.users import users_cli

    cli.command()(serve.serve)
    cli.command()(serve.doctor)
    cli.command()(ask.ask)
    cli.command("draft-reports")(drafting.draft_reports)
    cli.command()(data.deid)
    cli.command()(data.ingest)
    cli.command()(data.inspect)
    cli.command()(speech.transcribe)
    cli.command()(speech.speak)
    cli.command("model-info")(model.model_info)
    cli.command("convert-whisper")(model.convert_whisper)
    cli.command("make-conversations")(train.make_conversations)
    cli.command()(train.phantoms)
    cli.command("eval")(train.evaluate_benchmark)
    cli.command()(train.train)
    cli.command()(train.retrain)
    demo_cli = typer.Typer(name="demo-model", help="The default model: build it here (about 80 min on 2 CPU cores).")
    demo_cli.command("build")(train.demo_model_build)
    cli.add_typer(demo_cli)
    cli.add_typer(users_cli)
    cli.add_typer(audit_cli)


_register_commands()


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


if __name__ == "__main__":  # ``python -m app.cli``: how ``draft-reports --workers`` starts its workers
    main()
