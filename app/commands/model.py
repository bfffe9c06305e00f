"""``omniclinic model-info`` (exact parameter counts of a preset, without allocating any weights) and
``omniclinic convert-whisper`` (faster-whisper models to transformers folders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.commands.common import EXIT_FAILED, EXIT_USAGE
from app.commands.common import fail as _fail


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


def convert_whisper(
    model: Annotated[str, typer.Argument(help="tiny.en, base, or a CTranslate2 Whisper folder.")],
    out: Annotated[Path, typer.Option("--out", help="The transformers Whisper folder to write (must not exist).")],
) -> None:
    """Write a transformers Whisper folder (model, feature extractor, tokenizer) from a faster-whisper model.

    Lossless: the float16 weights are copied bit for bit. The folder feeds transformers, the training
    recipes and ``from_components(whisper=...)``.
    """
    from app.commands.common import current_settings
    from omni_core.speech.asr import resolve_model
    from omni_core.speech.errors import ModelNotFound
    from omni_core.whisper_ct2 import WhisperConversionError, convert_ct2_whisper

    settings = current_settings()
    if out.exists():
        raise _fail(f"{out} already exists; choose a new folder", EXIT_USAGE)
    try:
        source = resolve_model(model, settings.models_dir)
    except ModelNotFound as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    try:
        convert_ct2_whisper(source, out)
    except WhisperConversionError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except OSError as exc:
        raise _fail(f"cannot write {out} ({exc.strerror or type(exc).__name__})", EXIT_FAILED) from None
    typer.echo(f"wrote {out}")
