"""Questions about a study, typed or spoken, answered in text and speech; conversations keep their turns.

The one path the API, the UI and ``omniclinic ask`` share. A spoken question is decoded within the
audio limits and transcribed by the recognizer (the transcript is what the clinician sees and what
the model reads). The answer's model call is recorded as hashes (``ModelCall``) in the same unit of
work that stores the turn, before anything is returned (fail closed).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app import __version__
from app.core.config import Settings
from app.models import Conversation, Turn
from app.services.assistant import Assistant, Delta, ModelInfo, Speech
from app.services.auditing import Actor, record_access, record_model_call
from app.services.studies import StudyNotFound, StudyStore
from audit import Action, ModelCall, sha256_hex, unit_of_work

MAX_QUESTION_CHARS = 2000
T = TypeVar("T")


class AskRejected(ValueError):
    """A question that cannot be answered as given: ``status`` is the HTTP status, ``reason`` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class AskResult:
    conversation_id: str
    turn_id: str
    question: str
    transcript: str | None
    answer: str
    has_audio: bool
    model: ModelInfo

    def as_dict(self) -> dict[str, object]:
        return {
            "conversation_id": self.conversation_id,
            "turn_id": self.turn_id,
            "question": self.question,
            "transcript": self.transcript,
            "answer": self.answer,
            "audio_url": f"/api/v1/answers/{self.turn_id}/audio" if self.has_audio else None,
            "model": self.model.as_dict(),
        }


def wav_of(pieces: Sequence[Speech]) -> bytes:
    from omni_core.speech.encode import wav_bytes

    rate = pieces[0].sample_rate
    return wav_bytes(np.concatenate([piece.samples for piece in pieces]), rate)


IMAGE_HASH_KEY = "omniclinic_sha256"


def image_sha256(image: Any) -> str:
    """SHA-256 of the pixels the model saw; kept in a MetaTensor's meta, so a cached volume asked about
    again is not hashed again."""
    meta = getattr(image, "meta", None)
    if meta is not None and IMAGE_HASH_KEY in meta:
        return meta[IMAGE_HASH_KEY]
    plain = image.as_tensor() if hasattr(image, "as_tensor") else image
    digest = hashlib.sha256(plain.contiguous().numpy().tobytes()).hexdigest()
    if meta is not None:
        meta[IMAGE_HASH_KEY] = digest
    return digest


def transcribe_question(assistant: Assistant, audio: bytes, max_seconds: float) -> tuple[str, np.ndarray]:
    """The recognizer's transcript of a spoken question, and its samples (16 kHz mono).

    Raises:
        AskRejected: not audio (415), too long or too large (413), no speech in it (422).
    """
    from medical_data.audio import AudioLimits, decode_audio
    from medical_data.errors import AudioDecodeError, AudioLimitError
    from omni_core.speech.errors import NoSpeechDetected, RecognitionError

    try:
        decoded = decode_audio(audio, limits=AudioLimits(max_seconds=max_seconds))
    except AudioLimitError as exc:
        raise AskRejected(413, exc.reason) from None
    except AudioDecodeError as exc:
        raise AskRejected(415, exc.reason) from None
    try:
        text = assistant.recognizer().transcribe(decoded.samples).text.strip()
    except NoSpeechDetected as exc:
        raise AskRejected(422, str(exc)) from None
    except RecognitionError as exc:
        raise AskRejected(422, str(exc)) from None
    if not text:
        raise AskRejected(422, "no speech was heard in the recording; record the question again")
    return text, decoded.samples


def checked_question(text: str) -> str:
    text = text.strip()
    if not text:
        raise AskRejected(422, "the question is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise AskRejected(413, f"the question is longer than {MAX_QUESTION_CHARS} characters")
    return text


def model_call(info: ModelInfo, prompt: str, image: Any, audio: bytes | None, answer: str | None) -> ModelCall:
    return ModelCall(
        model_name=info.name,
        model_version=info.version or __version__,
        prompt_sha256=sha256_hex(prompt),
        image_sha256=(image_sha256(image),) if image is not None else (),
        audio_sha256=sha256_hex(audio) if audio else "",
        output_sha256=sha256_hex(answer) if answer is not None else "",
    )


def in_background(events: Iterator[T]) -> Iterator[T]:
    """Run ``events`` to its end on a thread of its own, whatever the reader does.

    A streamed answer is read as fast as the client's socket drains; a client that stops reading
    would otherwise hold the model's only slot. Here generation goes on (bounded by the answer's
    token and time limits), the turn is stored and audited, and the slot is released; the reader gets
    the items, or the error, in order.
    """
    items: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def produce() -> None:
        try:
            for item in events:
                items.put((True, item))
            items.put((False, None))
        except BaseException as exc:  # handed to the reader, who raises it
            items.put((False, exc))

    threading.Thread(target=produce, name="omniclinic-answer", daemon=True).start()
    while True:
        more, value = items.get()
        if more:
            yield value
        elif value is None:
            return
        else:
            raise value


class AskService:
    def __init__(self, settings: Settings, engine: Engine, studies: StudyStore, assistant: Assistant) -> None:
        self.settings, self.engine, self.studies, self.assistant = settings, engine, studies, assistant

    def _history(self, study_uid: str, actor: Actor, conversation_id: str | None) -> list[tuple[str, str]]:
        if conversation_id is None:
            return []
        with Session(self.engine) as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None or conversation.study_uid != study_uid or conversation.username != actor.username:
                raise StudyNotFound("no conversation with that id about this study")
            turns = session.scalars(select(Turn).where(Turn.conversation_id == conversation_id).order_by(Turn.position))
            return [(turn.question, turn.answer) for turn in turns]

    def prepare(
        self, study_uid: str, actor: Actor, *, text: str | None, audio: bytes | None, conversation_id: str | None
    ) -> tuple[Any, list[tuple[str, str]], str, str | None, np.ndarray | None]:
        """(image, earlier turns, question, transcript, spoken samples) for a question; everything
        checked before the model is asked."""
        if (text is None or not text.strip()) == (audio is None):
            raise AskRejected(422, "ask with either text or an audio recording")
        study = self.studies.get(study_uid)
        history = self._history(study_uid, actor, conversation_id)
        transcript, heard = None, None
        if audio is not None:
            transcript, heard = transcribe_question(self.assistant, audio, self.settings.max_audio_seconds)
        question = checked_question(transcript or text or "")
        image = self.studies.volume(study)
        return image, history, question, transcript, heard

    def events(
        self,
        study_uid: str,
        actor: Actor,
        *,
        text: str | None = None,
        audio: bytes | None = None,
        conversation_id: str | None = None,
        speak: bool = True,
        record_start: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        """("transcript", str), ("delta", str), ("speech", Speech) as they are made, then ("done", AskResult).

        The question is checked before the first event; with ``record_start`` (streaming, where the
        answer leaves as it is made) the model call is recorded before the first event too. The turn
        and the call with its output hash are stored before "done".
        """
        image, history, question, transcript, heard = self.prepare(
            study_uid, actor, text=text, audio=audio, conversation_id=conversation_id
        )
        info = self.assistant.info
        prompt = "\n".join([*(f"{q}\n{a}" for q, a in history), question])
        asked_as = {"question_input": "audio" if self.assistant.will_hear(heard) else "text"}  # else the transcript
        if record_start:
            with unit_of_work(self.engine) as session:
                record_model_call(
                    session,
                    actor,
                    study_uid,
                    model_call(info, prompt, image, audio, None).as_details() | asked_as | {"stage": "start"},
                )
        if transcript is not None:
            yield "transcript", transcript
        answer: list[str] = []
        speech: list[Speech] = []
        for piece in self.assistant.stream_answer(image, history, question, speak=speak, heard=heard):
            if isinstance(piece, Delta):
                answer.append(piece.text)
                yield "delta", piece.text
            else:
                speech.append(piece)
                yield "speech", piece
        result = self._store(
            study_uid,
            actor,
            conversation_id,
            question,
            transcript,
            "".join(answer).strip(),
            speech,
            model_call(info, prompt, image, audio, "".join(answer).strip()).as_details() | asked_as,
        )
        yield "done", result

    def ask(self, study_uid: str, actor: Actor, **kwargs: Any) -> AskResult:
        """The whole answer at once (the same path as ``events``)."""
        for kind, value in self.events(study_uid, actor, **kwargs):
            if kind == "done":
                return value
        raise AssertionError("events always ends with done")

    def _store(
        self,
        study_uid: str,
        actor: Actor,
        conversation_id: str | None,
        question: str,
        transcript: str | None,
        answer: str,
        speech: list[Speech],
        call: dict[str, object],
    ) -> AskResult:
        from app.models import new_id
        from omniclinic_common.files import write_atomically

        turn_id = new_id()
        audio_path = self.settings.answers_dir / f"{turn_id}.wav"
        if speech:
            write_atomically(audio_path, wav_of(speech))
        try:
            with unit_of_work(self.engine) as session:
                if conversation_id is None:
                    conversation = Conversation(id=new_id(), study_uid=study_uid, username=actor.username)
                    session.add(conversation)
                    conversation_id = conversation.id
                position = session.scalar(
                    select(func.count()).select_from(Turn).where(Turn.conversation_id == conversation_id)
                )
                session.add(
                    Turn(
                        id=turn_id,
                        conversation_id=conversation_id,
                        position=int(position or 0),
                        question=question,
                        spoken=transcript is not None,
                        answer=answer,
                        model_name=self.assistant.info.name,
                        has_audio=bool(speech),
                    )
                )
                record_model_call(session, actor, study_uid, call)
        except BaseException:
            audio_path.unlink(missing_ok=True)
            raise
        return AskResult(conversation_id, turn_id, question, transcript, answer, bool(speech), self.assistant.info)

    def answer_audio(self, turn_id: str, actor: Actor) -> Path:
        """The WAV of a spoken answer, for the user who asked; the read is audited."""
        with Session(self.engine) as session:
            found = session.execute(
                select(Turn, Conversation)
                .join(Conversation, Turn.conversation_id == Conversation.id)
                .where(Turn.id == turn_id)
            ).first()
        if found is None or found[1].username != actor.username or not found[0].has_audio:
            raise StudyNotFound("no spoken answer with that id")
        path = self.settings.answers_dir / f"{found[0].id}.wav"
        if not path.is_file():
            raise StudyNotFound("no spoken answer with that id")
        with unit_of_work(self.engine) as session:
            record_access(session, actor, action=Action.READ, type_code="110103", studies=[found[1].study_uid])
        return path
