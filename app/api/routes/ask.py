"""Questions about a study: ``POST /api/v1/studies/{uid}/ask`` (whole answer) and ``.../ask/stream``
(server-sent events: text deltas and spoken sentences as they are made); ``GET /api/v1/answers/{id}/audio``."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel

from app.api.deps import require
from app.services.asking import AskResult, in_background
from app.services.auditing import Actor

router = APIRouter(prefix="/api/v1", tags=["ask"])


class ModelPublic(BaseModel):
    name: str
    version: str
    source: str
    untrained_parts: list[str]
    caution: str


class AnswerPublic(BaseModel):
    conversation_id: str
    turn_id: str
    question: str
    transcript: str | None
    answer: str
    audio_url: str | None
    model: ModelPublic


def _question(
    text: Annotated[str | None, Form(max_length=4000)] = None,
    audio: Annotated[UploadFile | None, File(description="A spoken question (wav, ogg, webm, mp3, ...)")] = None,
    conversation_id: Annotated[str | None, Form(max_length=36)] = None,
    speak: Annotated[bool, Form()] = True,
) -> dict[str, Any]:
    return {
        "text": text,
        "audio": audio.file.read() if audio is not None else None,
        "conversation_id": conversation_id or None,
        "speak": speak,
    }


@router.post("/studies/{study_uid}/ask", response_model=AnswerPublic)
def ask(
    study_uid: str,
    request: Request,
    actor: Annotated[Actor, Depends(require("ask"))],  # first: nothing is read for a stranger
    question: Annotated[dict[str, Any], Depends(_question)],
) -> AnswerPublic:
    """Answer a typed (``text``) or spoken (``audio``) question; ``conversation_id`` continues a conversation."""
    result: AskResult = request.app.state.asking.ask(study_uid, actor, **question)
    return AnswerPublic.model_validate(result.as_dict())


def _sse(event: str, data: dict[str, object]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.post(
    "/studies/{study_uid}/ask/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def ask_stream(
    study_uid: str,
    request: Request,
    actor: Annotated[Actor, Depends(require("ask"))],  # first: nothing is read for a stranger
    question: Annotated[dict[str, Any], Depends(_question)],
) -> StreamingResponse:
    """Server-sent events: ``transcript``, ``delta`` (text), ``audio`` (a spoken sentence, base64 WAV),
    then ``done`` (the stored answer) or ``error``."""
    from omni_core.speech.encode import wav_bytes

    events = in_background(request.app.state.asking.events(study_uid, actor, record_start=True, **question))
    # the checks, the transcript, the queue and the start of the model call happen before the response
    # starts, so their errors are HTTP statuses (422, 503 with Retry-After ...), not events
    head = [next(events)]
    if head[0][0] == "transcript":
        head.append(next(events))

    def body() -> Iterator[str]:
        try:
            for kind, value in itertools.chain(head, events):
                if kind == "transcript":
                    yield _sse("transcript", {"text": value})
                elif kind == "delta":
                    yield _sse("delta", {"text": value})
                elif kind == "speech":
                    wav = wav_bytes(value.samples, value.sample_rate)
                    yield _sse("audio", {"wav_base64": base64.b64encode(wav).decode("ascii")})
                else:
                    yield _sse("done", AnswerPublic.model_validate(value.as_dict()).model_dump())
        except Exception as exc:  # the stream has started: the error is its last event, typed, no details
            yield _sse("error", {"error": type(exc).__name__, "message": getattr(exc, "reason", "the answer failed")})

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/answers/{turn_id}/audio", response_class=FileResponse, responses={200: {"content": {"audio/wav": {}}}})
def answer_audio(turn_id: str, request: Request, actor: Annotated[Actor, Depends(require("ask"))]) -> FileResponse:
    """The spoken answer (WAV), for the user who asked."""
    path = request.app.state.asking.answer_audio(turn_id, actor)
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})
