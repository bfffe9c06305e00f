"""``omniclinic ask STUDY_PATH (--text Q | --audio FILE) [--speak OUT.wav] [--json]``: the app's question
from a terminal, audited like the API (the person at the command line is the agent)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from app.commands.common import EXIT_FAILED, EXIT_USAGE, current_settings, fail, open_app_database


def ask(
    study: Annotated[Path, typer.Argument(help="A DICOM file, a series or study folder, or a zip.", exists=True)],
    text: Annotated[str | None, typer.Option("--text", help="The question, typed.")] = None,
    audio: Annotated[
        Path | None,
        typer.Option("--audio", help="The question, spoken (wav, ogg, webm, mp3).", exists=True, dir_okay=False),
    ] = None,
    speak: Annotated[Path | None, typer.Option("--speak", help="Write the spoken answer to this .wav file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print answer, transcript and model as JSON.")] = False,
) -> None:
    """Ask the configured model a question about a study; print the answer (and say it with --speak)."""
    from app.services.asking import AskRejected, checked_question, model_call, transcribe_question, wav_of
    from app.services.assistant import AnswerFailed, Assistant, Delta
    from app.services.auditing import Actor, record_model_call
    from app.services.studies import StudyStore, main_series
    from audit import unit_of_work
    from medical_data.discovery import scan
    from medical_data.errors import MedicalDataError
    from omniclinic_common.files import write_atomically

    if (text is None) == (audio is None):
        raise fail("give the question with either --text or --audio", EXIT_USAGE)
    if speak is not None and speak.suffix.lower() != ".wav":
        raise fail("--speak writes a .wav file", EXIT_USAGE)
    settings = current_settings()
    engine = open_app_database(settings)
    assistant = Assistant(settings)
    actor = Actor.at_command_line()
    with tempfile.TemporaryDirectory() as scratch:
        found = scan([study], extract_dir=Path(scratch))
        if not found.studies:
            reasons = sorted({r.reason for r in found.rejected})[:3]
            raise fail("no readable DICOM study there" + (f" ({'; '.join(reasons)})" if reasons else ""), EXIT_FAILED)
        study_uid, ref = next(iter(found.studies.items()))
        series = main_series(list(ref.series.values()))
        try:
            image = StudyStore.load_volume([i.path for i in series.instances]) if series else None
            audio_bytes = audio.read_bytes() if audio is not None else None
            transcript, heard = (
                transcribe_question(assistant, audio_bytes, settings.max_audio_seconds) if audio_bytes else (None, None)
            )
            question = checked_question(transcript or text or "")
            pieces = list(assistant.stream_answer(image, [], question, speak=speak is not None, heard=heard))
        except MedicalDataError as exc:
            raise fail(f"the study cannot be read: {exc.reason}", EXIT_FAILED) from None
        except AskRejected as exc:
            raise fail(exc.reason, EXIT_FAILED) from None
        except AnswerFailed as exc:
            raise fail(f"the model could not answer: {exc}", EXIT_FAILED) from None
    answer = "".join(piece.text for piece in pieces if isinstance(piece, Delta)).strip()
    speech = [piece for piece in pieces if not isinstance(piece, Delta)]
    with unit_of_work(engine) as session:  # recorded before the answer is shown (fail closed)
        call = model_call(assistant.info, question, image, audio_bytes, answer).as_details()
        asked_as = "audio" if assistant.will_hear(heard) else "text"
        record_model_call(session, actor, study_uid, call | {"question_input": asked_as})
    if speak is not None and speech:
        write_atomically(speak, wav_of(speech))
    if as_json:
        record = {"answer": answer, "model": assistant.info.as_dict()}
        if transcript is not None:
            record["transcript"] = transcript
        typer.echo(json.dumps(record, indent=2))
        return
    if transcript is not None:
        typer.echo(f"heard: {transcript}")
    typer.echo(answer)
    typer.secho(f"({assistant.info.name}: {assistant.info.caution})", err=True, fg=typer.colors.YELLOW)
