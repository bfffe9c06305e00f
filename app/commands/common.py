"""What every command shares: one way to report a problem (one red line on stderr and an exit status,
never a traceback) and one way to read the settings. Commands import this, never ``app.cli``."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer

from app.core.config import Settings, SettingsError, load_settings

EXIT_FAILED, EXIT_USAGE = 1, 2


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned Exit: ``raise fail(...) from None``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def current_settings(**overrides: object) -> Settings:
    """Settings for a command (options given on the command line win), errors as a usage exit."""
    try:
        settings = load_settings()
        if overrides:
            settings = Settings.model_validate(
                settings.model_dump() | {k: v for k, v in overrides.items() if v is not None}
            )
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except ValueError as exc:  # pydantic's ValidationError for an override
        errors = exc.errors() if hasattr(exc, "errors") else None
        raise fail(f"invalid option: {errors[0]['msg'] if errors else exc}", EXIT_USAGE) from None
    return settings


def open_app_database(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    """``app.core.db.open_database`` for a command: settings problems exit 2, an unreachable or
    unmigratable database exits 1, each as one line."""
    from app.core.db import DatabaseUnavailable, open_database

    try:
        return open_database(settings or current_settings())
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except DatabaseUnavailable as exc:
        raise fail(str(exc), EXIT_FAILED) from None


@contextmanager
def progress_bar(label: str, *, enabled: bool = True):  # type: ignore[no-untyped-def]
    """Progress bars on stderr when it is a terminal, one per phase; silent otherwise (logs, CI).

    Yields a callable taking (done, total) for one phase, or (phase, done, total) for several.
    """
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        tasks: dict[str, object] = {}

        def update(*arguments: object) -> None:
            phase, done, total = (label, *arguments) if len(arguments) == 2 else arguments
            if phase not in tasks:
                tasks[phase] = progress.add_task(str(phase), total=None)
            progress.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

        yield update
