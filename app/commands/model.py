"""``omniclinic model-info``: exact parameter counts of a preset, without allocating any weights."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def model_info(
    preset: Annotated[str, typer.Option(help="tiny, demo-cpu or baichuan-omni-1.5-7b.")] = "demo-cpu",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the parameter count of each part and the total (the model is built on the meta device)."""
    import torch

    from omni_core import OmniConfig, OmniForConditionalGeneration

    try:
        config = OmniConfig.from_preset(preset)
    except ValueError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    with torch.device("meta"):
        counts = OmniForConditionalGeneration(config).parameter_counts()
    if as_json:
        typer.echo(json.dumps({"preset": preset, "parameters": counts}))
        return
    for part, count in counts.items():
        typer.echo(f"{part:<16}{count:>16,}")
