"""Typed speech errors: each message says what is wrong and how to fix it, never what was said."""

from __future__ import annotations


class SpeechError(RuntimeError):
    code = "speech_error"


class SynthesisError(SpeechError):
    code = "synthesis_failed"


class RecognitionError(SpeechError):
    code = "recognition_failed"


class NoSpeechDetected(RecognitionError):
    """The audio holds no speech (silence, noise): an answer in its own right, not an empty transcript."""

    code = "no_speech"

    def __init__(self) -> None:
        super().__init__("no speech detected")


class ModelNotFound(SpeechError):
    code = "model_not_found"
