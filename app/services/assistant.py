"""The model a process serves, with its speech engines, behind a bounded queue.

One ``Assistant`` per process: the omni model (from ``OMNICLINIC_MODEL_DIR``, or the preset built once
into the models cache), the speech recognizer and the synthesizer, all loaded on first use. Answers
are generated one at a time; ``GenerationGate`` lets at most ``queue_depth`` more wait, and refuses
the rest at once (the API turns that into 503 with Retry-After) instead of letting them pile up.

What the model is, and which of its parts were never trained, travels with every answer
(``ModelInfo``): until a trained model is configured, nothing it says may pass for a finding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from omni_core.prompts import SYSTEM_PROMPT

logger = logging.getLogger("omniclinic.assistant")

SERVING_RECORD = "serving.json"
"""Written into a model folder by whatever built it: its display name and the parts never trained."""
UNTRAINED_CAUTION = (
    "Demonstration model: its image and audio parts are untrained, so this answer is not based on the "
    "image. Not a finding; not for clinical decisions."
)
SPOKEN_CAUTION = "Demonstration model, not a finding."
GENERAL_CAUTION = "A draft from a model: a qualified clinician must check it. Not for clinical decisions on its own."
TRAINABLE_PARTS = ("vision", "projector", "audio_tokenizer", "audio_embedding", "llm", "audio_head", "speech_decoder")
SPEECH_OUT_PARTS = ("audio_head", "speech_decoder")
"""Parts that only make the model's own speech: left untrained, the written answer still rests on the study."""
HEARD_MAX_SECONDS = 30.0
"""The longest spoken question a model hears itself (its Whisper encoder's window)."""
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "omniclinic-demo"
"""The default model, trained by ``omniclinic demo-model build`` and committed (a trained-parts folder)."""


class Busy(RuntimeError):
    """The model's queue is full, or the wait ran out; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the model is busy; try again shortly")
        self.retry_after = retry_after


class AnswerFailed(RuntimeError):
    """The model could not answer (a typed reason, no patient data)."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    source: str
    untrained_parts: tuple[str, ...]
    caution: str
    hears_audio: bool = False
    """A spoken question reaches the model as audio (its own audio tokenizer), not as the transcript:
    what the model's serving record says measured better."""
    spoken_caution: str = ""
    """Said before every spoken answer (empty: nothing)."""

    @property
    def untrained(self) -> bool:
        """Does an untrained part shape the written answer (the speech-out parts do not)?"""
        return bool(set(self.untrained_parts) - set(SPEECH_OUT_PARTS))

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "untrained_parts": list(self.untrained_parts),
            "caution": self.caution,
            "spoken_questions": "heard as audio" if self.hears_audio else "read from the transcript",
        }


def describe_model(settings: Settings) -> ModelInfo:
    """What ``settings`` will serve, read without loading any weights (for ``doctor`` and the banner)."""
    if settings.model_dir is not None:
        return _folder_info(settings.model_dir, source=str(settings.model_dir))
    if settings.model_preset == "tiny":
        return ModelInfo(
            "tiny (random weights)",
            "0",
            "preset tiny",
            TRAINABLE_PARTS,
            UNTRAINED_CAUTION,
            spoken_caution=SPOKEN_CAUTION,
        )
    trained = default_model_folder()
    return _folder_info(trained, source="the default model (models/omniclinic-demo)") if trained else DEMO_INFO


DEMO_INFO = ModelInfo(
    "demo-cpu (SmolLM2-135M backbone)",
    "0",
    "preset demo-cpu, built from installed parts",
    tuple(part for part in TRAINABLE_PARTS if part != "llm"),
    UNTRAINED_CAUTION,
    spoken_caution=SPOKEN_CAUTION,
)


def _serving_record(folder: Path) -> dict[str, Any] | None:
    """A folder's serving record, None when it is missing or not what ``demo-model build`` writes."""
    try:
        record = json.loads((folder / SERVING_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    parts = record.get("untrained_parts", [])
    texts = ("name", "version", "caution", "spoken_input", "spoken_caution")
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return None
    if not all(isinstance(record.get(key, ""), str) for key in texts):
        return None
    return record


def _folder_info(folder: Path, source: str) -> ModelInfo:
    """What a model folder is, as far as its own records and layout show. A folder's record may add
    to the general caution and name parts it left untrained, never take anything away: a
    trained-parts folder whose parts are neither stored nor packaged counts them untrained, and one
    without a valid serving record (a build that did not finish, a hand-made folder) counts as untrained."""
    from omni_core.trained_parts import is_parts_folder, uncovered_parts

    record = _serving_record(folder)
    untrained = set(record.get("untrained_parts", [])) if record else set()
    if is_parts_folder(folder):
        untrained |= set(uncovered_parts(folder)) if record else set(TRAINABLE_PARTS)
    record = record or {}
    info = ModelInfo(
        str(record.get("name") or folder.name)[:128],
        str(record.get("version", ""))[:64],
        source,
        tuple(part for part in TRAINABLE_PARTS if part in untrained),
        "",
    )
    if info.untrained:
        return dataclasses.replace(info, caution=UNTRAINED_CAUTION, spoken_caution=SPOKEN_CAUTION)
    extra = str(record.get("caution", ""))[:300].strip()
    return dataclasses.replace(
        info,
        caution=f"{GENERAL_CAUTION} {extra}".strip(),
        hears_audio=record.get("spoken_input") == "audio",
        spoken_caution=str(record.get("spoken_caution", ""))[:120].strip(),
    )


class GenerationGate:
    """One answer at a time, at most ``depth`` waiting, each for at most ``timeout_s``."""

    def __init__(self, depth: int, timeout_s: float) -> None:
        self.depth, self.timeout_s = depth, timeout_s
        self._slot = threading.Semaphore(1)
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_s = 5.0  # a first guess at one answer's time, refined as answers complete

    def retry_after(self) -> int:
        return max(1, math.ceil(self._mean_s * max(1, self._admitted)))

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._admitted >= 1 + self.depth:
                raise Busy(self.retry_after())
            self._admitted += 1
        try:
            if not self._slot.acquire(timeout=self.timeout_s):
                raise Busy(self.retry_after())
            started = time.monotonic()
            try:
                yield
            finally:
                self._slot.release()
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)
        finally:
            with self._lock:
                self._admitted -= 1


@dataclass(frozen=True)
class Delta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class Speech:
    """A spoken sentence of the answer (float32 mono)."""

    samples: np.ndarray
    sample_rate: int


class Assistant:
    """The served model and speech engines of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.info = describe_model(settings)
        self.gate = GenerationGate(settings.queue_depth, settings.queue_timeout_s)
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._recognizer: Any = None
        self._synthesizer: Any = None

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (the server does at start, so the first question does not wait)."""
        self._ensure_model()

    def _ensure_model(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                import torch

                torch.set_num_threads(self.settings.cpu_threads)
                self._model, self._processor = _load_model(self.settings)
            return self._model, self._processor

    def recognizer(self) -> Any:
        with self._lock:
            if self._recognizer is None:
                from omni_core.speech.asr import RecognitionOptions, SpeechRecognizer, resolve_model

                model = adapted_recognizer(self.settings) or resolve_model(
                    self.settings.asr_model, self.settings.models_dir
                )
                self._recognizer = SpeechRecognizer(
                    model,
                    cpu_threads=self.settings.cpu_threads,
                    options=RecognitionOptions(max_seconds=self.settings.max_audio_seconds),
                )
            return self._recognizer

    def synthesizer(self) -> Any:
        with self._lock:
            if self._synthesizer is None:
                from omni_core.speech.tts import load_synthesizer

                self._synthesizer = load_synthesizer(
                    self.settings.tts_engine, deterministic=self.settings.tts_deterministic
                )
            return self._synthesizer

    def will_hear(self, samples: np.ndarray | None) -> bool:
        """Will a spoken question reach the model as audio? Only for a model that hears, and only
        within its audio tokenizer's window (longer questions go as the transcript)."""
        return samples is not None and self.info.hears_audio and len(samples) <= HEARD_MAX_SECONDS * 16_000

    # -- answering -------------------------------------------------------------------------------
    def prompt(
        self, image: Any, history: Sequence[tuple[str, str]], question: str, heard: np.ndarray | None = None
    ) -> list[Any]:
        """The conversation the model sees: the study's image with the first question, earlier turns
        as they were, then the new question: its text, or with ``heard`` (16 kHz samples) its audio,
        which the model's own audio tokenizer reads. Text is encoded by the processor, which keeps any
        control token's string in it as text."""
        from omni_core.processing_omni import Message, Part

        messages = [Message("system", [Part("text", SYSTEM_PROMPT)])]
        turns = [*history, (question, "")]
        for index, (asked, answered) in enumerate(turns):
            parts = [Part("image", image)] if index == 0 and image is not None else []
            last = index == len(turns) - 1
            asked_part = Part("audio", heard) if last and heard is not None else Part("text", asked)
            messages.append(Message("user", [*parts, asked_part]))
            if index < len(turns) - 1:
                messages.append(Message("assistant", [Part("text", answered)]))
        return messages

    def stream_answer(
        self,
        image: Any,
        history: Sequence[tuple[str, str]],
        question: str,
        *,
        speak: bool,
        heard: np.ndarray | None = None,
    ) -> Iterator[Delta | Speech]:
        """Text deltas as the model writes them and, with ``speak``, each sentence's speech as soon as
        the sentence is complete. ``heard``: the spoken question's samples, given to a model that
        hears audio (``ModelInfo.hears_audio``). Runs inside a gate slot (``Busy`` when the queue is full).

        Raises:
            Busy: the queue is full or the wait ran out.
            AnswerFailed: the conversation does not fit the model, or generation failed.
        """
        from omni_core.modeling_omni import DecodingOptions
        from omni_core.processing_omni import ControlTokenInText, InputTooLong
        from omni_core.speech.normalize import split_sentences

        with self.gate.slot():
            model, processor = self._ensure_model()
            messages = self.prompt(image, history, question, heard if self.will_hear(heard) else None)
            options = DecodingOptions(max_new_tokens=self.settings.max_new_tokens, speech=False, temperature=0.0)
            deadline = time.monotonic() + self.settings.answer_timeout_s
            written = ""
            spoken = 0  # characters of ``written`` already spoken
            if speak and self.info.spoken_caution:
                yield from self._speak(self.info.spoken_caution)
            try:
                for event in processor.stream(model, messages, options=options, speak_sentences=False):
                    if not event.text:
                        continue
                    written += event.text
                    yield Delta(event.text)
                    if speak:
                        sentences = split_sentences(written[spoken:])
                        if len(sentences) > 1:  # every sentence but the last is complete
                            done = written[spoken:].rindex(sentences[-1])
                            yield from self._speak(written[spoken : spoken + done])
                            spoken += done
                    if time.monotonic() > deadline:
                        raise AnswerFailed(f"the answer took longer than {self.settings.answer_timeout_s:g} s")
            except (InputTooLong, ControlTokenInText, ValueError) as exc:
                raise AnswerFailed(str(exc) if isinstance(exc, InputTooLong) else type(exc).__name__) from None
            if speak and written[spoken:].strip():
                yield from self._speak(written[spoken:])

    def _speak(self, text: str) -> Iterator[Speech]:
        from omni_core.speech.errors import SynthesisError
        from omni_core.speech.tts import stream_speech

        synthesizer = self.synthesizer()
        try:
            for chunk in stream_speech(synthesizer, text):
                yield Speech(chunk.samples, chunk.sample_rate)
        except SynthesisError:
            return  # text with nothing speakable (symbols only): the written answer stands


def _load_model(settings: Settings) -> tuple[Any, Any]:
    """(model in eval mode, processor) as the settings say; a preset is built once into the cache."""
    import torch

    from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor
    from omni_core.tokenization import character_tokenizer
    from omni_core.trained_parts import load_model_folder

    if settings.model_dir is not None:
        model, tokenizer = load_model_folder(settings.model_dir, settings.models_dir)
    elif settings.model_preset == "tiny":
        torch.manual_seed(0)
        model = OmniForConditionalGeneration(OmniConfig.from_preset("tiny")).eval()
        tokenizer = character_tokenizer()
    else:
        model, tokenizer = load_model_folder(prepare_default_model(settings.models_dir), settings.models_dir)
    return model.eval(), OmniProcessor(model.config, tokenizer)


def served_folder(settings: Settings) -> Path | None:
    """The model folder the settings serve (None: a preset built in memory or the untrained build)."""
    if settings.model_dir is not None:
        return settings.model_dir
    return default_model_folder() if settings.model_preset == "demo-cpu" else None


def adapted_recognizer(settings: Settings) -> Path | None:
    """The speech recognizer adapted with the served model (``omniclinic demo-model build`` keeps it
    only when it measured better than Whisper tiny.en), when the settings leave the recognizer at
    its default; None otherwise."""
    folder = served_folder(settings)
    if settings.asr_model != "tiny.en" or folder is None:
        return None
    from omni_core.trained_parts import recognizer_folder

    return recognizer_folder(folder, settings.models_dir)


def default_model_folder() -> Path | None:
    """The committed default model, when this checkout has it."""
    from omni_core.trained_parts import is_parts_folder

    return DEFAULT_MODEL if is_parts_folder(DEFAULT_MODEL) else None


def prepare_default_model(cache_dir: Path) -> Path:
    """The folder the ``demo-cpu`` preset serves, with what it loads from packages prepared once in
    ``cache_dir`` (the server does this before its workers start, so they never race): the trained
    default model, or, in a checkout without it, the untrained ``demo-cpu`` build."""
    trained = default_model_folder()
    if trained is None:
        return demo_model_folder(cache_dir)
    prepare_parts_folder(trained, cache_dir)
    return trained


def prepare_parts_folder(folder: Path, cache_dir: Path) -> None:
    """Unpack once what a trained-parts folder loads from packages (its LLM, its Whisper encoder, its
    adapted recognizer), so that processes started next find them ready."""
    from omni_core.loading import CheckpointError
    from omni_core.trained_parts import component_folders, is_parts_folder, read_components, recognizer_folder

    if not is_parts_folder(folder):
        return
    with suppress(CheckpointError):  # a malformed folder fails clearly when it is loaded
        component_folders(read_components(folder)[0], cache_dir)
    recognizer_folder(folder, cache_dir)


def prepare_served_model(settings: Settings) -> None:
    """Before a server's workers or a job's ranks start: everything the served model loads, made once."""
    if settings.model_dir is not None:
        prepare_parts_folder(settings.model_dir, settings.models_dir)
    elif settings.model_preset == "demo-cpu":
        prepare_default_model(settings.models_dir)


DEMO_FOLDER = "demo-cpu-smollm2"


def demo_model_folder(cache_dir: Path) -> Path:
    """The ``demo-cpu`` preset with SmolLM2-135M as its backbone and its other parts fresh (seeded),
    saved once as a model folder with its tokenizer and a serving record that says so."""
    from omni_core.model_cache import building_folder

    target = cache_dir / DEMO_FOLDER
    if (target / "model.safetensors").is_file():
        return target
    import torch

    from omni_core import OmniConfig, OmniForConditionalGeneration
    from omni_core.backbones import smollm2_folder
    from omni_core.tokenization import load_tokenizer

    llm = smollm2_folder(cache_dir)
    torch.manual_seed(0)
    model = OmniForConditionalGeneration.from_components(OmniConfig.from_preset("demo-cpu"), llm=llm)
    info = DEMO_INFO
    with building_folder(target) as staging:
        model.save_pretrained(staging)
        load_tokenizer(llm).save_pretrained(str(staging))
        (staging / SERVING_RECORD).write_text(
            json.dumps({"name": info.name, "version": "0", "untrained_parts": list(info.untrained_parts)}) + "\n",
            encoding="utf-8",
        )
    return target
