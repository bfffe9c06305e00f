"""Real engines, loaded once per session; dictation audio made with Piper from sentences in the repo."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medical_data.audio import decode_audio
from omni_core.speech.asr import SpeechRecognizer, resolve_model
from omni_core.speech.encode import wav_bytes
from omni_core.speech.normalize import normalize_for_speech
from omni_core.speech.tts import EspeakSynthesizer, PiperSynthesizer, load_synthesizer

SENTENCES = [
    line.strip()
    for line in (Path(__file__).with_name("clinical_sentences.txt")).read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#")
]


@dataclass(frozen=True)
class Dictation:
    text: str
    samples: np.ndarray  # 16 kHz mono, as the app receives a voice question


@pytest.fixture(scope="session")
def piper() -> PiperSynthesizer:
    synthesizer = load_synthesizer("piper", deterministic=True)  # the same audio every run
    assert isinstance(synthesizer, PiperSynthesizer)
    return synthesizer


@pytest.fixture
def espeak(require_service) -> EspeakSynthesizer:  # type: ignore[no-untyped-def]
    require_service(shutil.which("espeak-ng") is not None, "espeak-ng is not installed (apt-get install espeak-ng)")
    return EspeakSynthesizer()


@pytest.fixture(scope="session")
def recognizer(tmp_path_factory: pytest.TempPathFactory) -> SpeechRecognizer:
    return SpeechRecognizer(resolve_model("tiny.en", tmp_path_factory.mktemp("models")), cpu_threads=2)


def to_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Through a WAV file and PyAV, as an uploaded recording would travel."""
    return decode_audio(wav_bytes(samples, sample_rate)).samples


@pytest.fixture(scope="session")
def dictations(piper: PiperSynthesizer) -> list[Dictation]:
    return [
        Dictation(text, to_16k(piper.synthesize_sentence(normalize_for_speech(text)), piper.sample_rate))
        for text in SENTENCES
    ]
