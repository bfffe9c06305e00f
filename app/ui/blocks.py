"""The clinician UI (Gradio): studies with upload, a viewer with a slice slider and window presets, a
question by voice or text answered in text and speech as it is written, and the report draft with edit
and sign-off. Every handler acts as the logged-in user through the same services as the API, so the
same permissions and the same audit trail apply."""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from fastapi import FastAPI, HTTPException

from app.api.deps import actor_from_token
from app.core.security import allowed
from app.services.auditing import Actor

WINDOWS = ["default", "lung", "mediastinum", "bone", "brain", "abdomen"]
CSS = ".caution { color: #8a4b00; font-weight: 600 } #banner { border-left: 4px solid #b00020; padding-left: .8em }"


class UIError(gr.Error):
    pass


def _actor(app: FastAPI, request: gr.Request, permission: str) -> Actor:
    raw = getattr(request, "request", None) or request
    try:
        actor = actor_from_token(raw, None, app.state, cookie=True)  # the session cookie
    except HTTPException as exc:
        raise UIError(f"{exc.detail}: reload the page to log in") from None
    if not allowed(actor.role, permission):
        raise UIError(f"the {actor.role} role may not do this")
    return actor


def _friendly(exc: Exception) -> UIError:
    """A typed service error as a message for the screen (its reason only: never a traceback)."""
    reason = getattr(exc, "reason", None) or (str(exc) if isinstance(exc, LookupError) else type(exc).__name__)
    return UIError(str(reason))


def build_blocks(app: FastAPI, info: Any) -> gr.Blocks:
    from app.services.asking import in_background
    from app.services.assistant import Busy

    state = app.state

    def studies_table(request: gr.Request) -> tuple[list[list[Any]], Any]:
        actor = _actor(app, request, "studies:read")
        studies = state.studies.list(actor)
        rows = [[s.study_uid, s.modalities, s.description, s.series_count, s.instance_count] for s in studies]
        choices = [s.study_uid for s in studies]
        return rows, gr.update(choices=choices, value=choices[0] if choices else None)

    def upload(files: list[str] | None, request: gr.Request) -> tuple[list[list[Any]], Any, str]:
        from app.services.studies import UploadRejected

        actor = _actor(app, request, "studies:upload")
        if not files:
            raise UIError("choose DICOM files or a zip first")
        try:
            with contextlib.ExitStack() as stack:
                sources = [stack.enter_context(open(name, "rb")) for name in files]
                folder = state.studies.stage_upload(sources)
            for name in files:
                Path(name).unlink(missing_ok=True)  # Gradio's copies: patient data, kept no longer than needed
            result = state.studies.import_upload(folder, actor)
        except UploadRejected as exc:
            raise _friendly(exc) from None
        rows, choices = studies_table(request)
        note = f"stored {len(result.studies)} study(ies)" + (
            f"; {len(result.rejected)} file(s) refused" if result.rejected else ""
        )
        return rows, choices, note

    def show(study_uid: str | None, index: float | None, window: str, request: gr.Request) -> tuple[Any, Any]:
        from PIL import Image

        if not study_uid:
            return None, gr.update()
        actor = _actor(app, request, "studies:read")
        try:
            png, depth = state.studies.render_png(
                study_uid,
                actor,
                series_uid=None,
                index=None if index is None else int(index),
                preset=None if window == "default" else window,
            )
        except Exception as exc:
            raise _friendly(exc) from None
        return Image.open(io.BytesIO(png)), gr.update(maximum=max(depth - 1, 1), interactive=depth > 1)

    def open_study(study_uid: str | None, window: str, request: gr.Request) -> tuple[Any, Any, list, None, str, None]:
        image, slider = show(study_uid, None, window, request)
        return image, slider, [], None, "", None

    def ask(
        question: str,
        recording: str | None,
        history: list[dict[str, str]],
        conversation: str | None,
        study_uid: str | None,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        actor = _actor(app, request, "ask")
        if not study_uid:
            raise UIError("open a study first")
        audio = Path(recording).read_bytes() if recording else None
        text = None if audio is not None else question
        history = [*history]
        caution = state.assistant.info.caution
        try:
            events = in_background(
                state.asking.events(
                    study_uid, actor, text=text, audio=audio, conversation_id=conversation, record_start=True
                )
            )
            first = next(events)  # the question is checked (and a recording transcribed) before it is shown
            history.append({"role": "user", "content": question or "(spoken question)"})
            history.append({"role": "assistant", "content": f"⚠ {caution}\n\n"})
            yield history, None, conversation, "", None  # the question box and recording are cleared once
            keep = gr.update()  # and left alone after that: the next question may be typed meanwhile
            for kind, value in itertools.chain([first], events):
                if kind == "transcript":
                    history[-2] = {"role": "user", "content": f"🎤 {value}"}
                elif kind == "delta":
                    history[-1] = {"role": "assistant", "content": history[-1]["content"] + value}
                elif kind == "speech":
                    samples = np.clip(value.samples * 32767, -32768, 32767).astype(np.int16)
                    yield history, (value.sample_rate, samples), conversation, keep, keep
                    continue
                else:
                    conversation = value.conversation_id
                yield history, None, conversation, keep, keep
        except Busy as exc:
            raise UIError(f"the model is busy; try again in {exc.retry_after} s") from None
        except UIError:
            raise
        except Exception as exc:
            raise _friendly(exc) from None

    def draft(study_uid: str | None, request: gr.Request) -> tuple[str, str, str]:
        actor = _actor(app, request, "reports:write")
        if not study_uid:
            raise UIError("open a study first")
        try:
            report = state.reports.draft(study_uid, actor)
        except Exception as exc:
            raise _friendly(exc) from None
        return report.draft_text, report.id, f"draft by {report.model_name}: edit, save, then sign"

    def save(report_id: str | None, text: str, request: gr.Request) -> str:
        actor = _actor(app, request, "reports:write")
        if not report_id:
            raise UIError("draft a report first")
        try:
            state.reports.edit(report_id, text, actor)
        except Exception as exc:
            raise _friendly(exc) from None
        return "edits saved (the draft is kept too)"

    def sign(report_id: str | None, text: str, request: gr.Request) -> str:
        actor = _actor(app, request, "reports:sign")
        if not report_id:
            raise UIError("draft a report first")
        try:
            report = state.reports.get(report_id, actor)
            if text.strip() and text != (report.edited_text or report.draft_text):
                state.reports.edit(report_id, text, actor)
            signed = state.reports.sign(report_id, actor)
        except Exception as exc:
            raise _friendly(exc) from None
        return f"signed by {signed.signed_by}; the report is final"

    with gr.Blocks(title="omniclinic", analytics_enabled=False, delete_cache=(600, 600)) as blocks:
        gr.Markdown(info_text(info), elem_id="banner")
        conversation = gr.State(None)
        report_id = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                table = gr.Dataframe(
                    headers=["study", "modality", "description", "series", "images"],
                    interactive=False,
                    label="Studies",
                    elem_id="studies",
                )
                files = gr.File(label="Upload DICOM files or a zip", file_count="multiple", elem_id="upload")
                upload_button = gr.Button("Upload", elem_id="upload-button")
                upload_note = gr.Markdown(elem_id="upload-note")
                study = gr.Dropdown(label="Study", choices=[], elem_id="study")
            with gr.Column(scale=2):
                viewer = gr.Image(label="Viewer", type="pil", interactive=False, elem_id="viewer", height=420)
                slider = gr.Slider(0, 1, value=0, step=1, label="Slice", elem_id="slice")
                window = gr.Radio(WINDOWS, value="default", label="Window", elem_id="window")
        with gr.Row():
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="Conversation", elem_id="chat", height=320)
                question = gr.Textbox(
                    label="Question", placeholder="Type a question, or record one", elem_id="question"
                )
                recording = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Ask by voice", elem_id="mic"
                )
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                spoken = gr.Audio(
                    label="Spoken answer",
                    streaming=True,
                    autoplay=True,
                    format="wav",
                    interactive=False,
                    elem_id="spoken",
                )
            with gr.Column(scale=1):
                draft_button = gr.Button("Draft report", elem_id="draft")
                report_text = gr.Textbox(label="Report", lines=12, elem_id="report")
                with gr.Row():
                    save_button = gr.Button("Save edits", elem_id="save")
                    sign_button = gr.Button("Sign off", variant="stop", elem_id="sign")
                report_status = gr.Markdown(elem_id="report-status")

        blocks.load(studies_table, None, [table, study])
        upload_button.click(upload, files, [table, study, upload_note])
        study.change(open_study, [study, window], [viewer, slider, chat, conversation, report_text, report_id])
        slider.release(show, [study, slider, window], [viewer, slider])
        window.change(show, [study, slider, window], [viewer, slider])
        ask_inputs = [question, recording, chat, conversation, study]
        ask_outputs = [chat, spoken, conversation, question, recording]
        # a question asked while the last answer is still being spoken is taken, not dropped
        ask_button.click(ask, ask_inputs, ask_outputs, trigger_mode="multiple")
        question.submit(ask, ask_inputs, ask_outputs, trigger_mode="multiple")
        draft_button.click(draft, study, [report_text, report_id, report_status])
        save_button.click(save, [report_id, report_text], report_status)
        sign_button.click(sign, [report_id, report_text], report_status)
    return blocks


def info_text(info: Any) -> str:
    if info is None:
        return "**omniclinic**. Not for clinical decisions."
    return (
        f"**omniclinic**: model **{info.name}**. {info.caution} "
        "Not for clinical decisions: every answer and draft is for a qualified clinician to check."
    )
