"""How every command reports a problem: one red line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import typer

EXIT_FAILED, EXIT_USAGE = 1, 2


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned Exit: ``raise fail(...) from None``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)
