"""``omniclinic transcribe`` and ``omniclinic speak``: the speech engines from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from app.commands.common import EXIT_FAILED, EXIT_USAGE
from app.commands.common import fail as _fail

OUTPUT_FORMATS = {".wav": "wav", ".ogg": "ogg", ".opus": "ogg"}


def transcribe(
    audio: Annotated[Path, typer.Argument(help="wav, flac, ogg/opus, webm or mp3.", exists=True, dir_okay=False)],
    as_json: Annotated[
        bool, typer.Option("--json", help="Text, segments, word timings and corrections as JSON.")
    ] = False,
) -> None:
    """Print the transcript of a recording. Exit 1 when it holds no speech or cannot be decoded."""
    from app.commands.common import current_settings
    from medical_data.audio import AudioLimits, decode_audio
    from medical_data.errors import AudioRejected
    from omni_core.speech.asr import RecognitionOptions, SpeechRecognizer, resolve_model
    from omni_core.speech.errors import ModelNotFound, NoSpeechDetected, RecognitionError

    settings = current_settings()
    try:
        decoded = decode_audio(audio, limits=AudioLimits(max_seconds=settings.max_audio_seconds))
    except AudioRejected as exc:
        raise _fail(exc.reason, EXIT_FAILED) from None
    try:
        model = resolve_model(settings.asr_model, settings.models_dir)
    except ModelNotFound as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    recognizer = SpeechRecognizer(
        model, cpu_threads=settings.cpu_threads, options=RecognitionOptions(max_seconds=settings.max_audio_seconds)
    )
    try:
        transcript = recognizer.transcribe(decoded.samples)
    except NoSpeechDetected as exc:
        if as_json:
            typer.echo(json.dumps({"text": "", "no_speech": True, "message": str(exc)}))
        raise _fail(str(exc), EXIT_FAILED) from None
    except RecognitionError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    typer.echo(json.dumps(transcript.as_dict(), indent=2) if as_json else transcript.text)


def speak(
    text: Annotated[str, typer.Argument(help="What to say (clinical abbreviations and units are read out).")],
    out: Annotated[Path, typer.Option("--out", help="Output file: .wav, .ogg or .opus.")],
    engine: Annotated[
        Literal["auto", "piper", "espeak"] | None, typer.Option(help="[default: OMNICLINIC_TTS_ENGINE or auto]")
    ] = None,
) -> None:
    """Speak TEXT into an audio file."""
    from app.commands.common import current_settings
    from omni_core.speech.encode import ogg_opus_bytes, wav_bytes
    from omni_core.speech.errors import SynthesisError
    from omni_core.speech.tts import load_synthesizer
    from omni_core.speech.tts import speak as synthesize
    from omniclinic_common.files import write_atomically

    kind = OUTPUT_FORMATS.get(out.suffix.lower())
    if kind is None:
        raise _fail(f"--out must end in {', '.join(OUTPUT_FORMATS)}", EXIT_USAGE)
    try:
        settings = current_settings()
        synthesizer = load_synthesizer(engine or settings.tts_engine, deterministic=settings.tts_deterministic)
        samples = synthesize(synthesizer, text)
    except SynthesisError as exc:
        raise _fail(str(exc), EXIT_USAGE if "install" in str(exc) else EXIT_FAILED) from None
    data = (
        wav_bytes(samples, synthesizer.sample_rate)
        if kind == "wav"
        else ogg_opus_bytes(samples, synthesizer.sample_rate)
    )
    write_atomically(out, data)
    typer.echo(f"wrote {out} ({len(samples) / synthesizer.sample_rate:.1f} s, {synthesizer.name})")
