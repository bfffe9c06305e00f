from __future__ import annotations

import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from medical_data.audio import decode_audio
from omni_core.speech import tts
from omni_core.speech.asr import SpeechRecognizer
from omni_core.speech.encode import ogg_opus_bytes, wav_bytes
from omni_core.speech.errors import SynthesisError
from omni_core.speech.normalize import normalize_for_speech, split_sentences
from omni_core.speech.tts import EspeakSynthesizer, PiperSynthesizer, speak, stream_speech

from .conftest import to_16k

ANSWER = (
    "There is a 3.2 cm spiculated nodule in the right upper lobe. No pleural effusion is seen. "
    "Recommend a follow-up CT in 3 months."
)


@pytest.mark.parametrize("engine", ["piper", "espeak"])
def test_engines_make_audio_of_plausible_duration(
    engine: str, piper: PiperSynthesizer, espeak: EspeakSynthesizer
) -> None:
    synthesizer = piper if engine == "piper" else espeak
    samples = speak(synthesizer, ANSWER)
    seconds = len(samples) / synthesizer.sample_rate
    words = len(normalize_for_speech(ANSWER).split())
    assert 1.5 <= words / seconds <= 5.0  # speech rate of a person, not a click or a drone
    assert 0.05 < float(abs(samples).max()) <= 1.0
    assert samples.dtype.name == "float32"


def test_tts_then_asr_recovers_the_words(piper: PiperSynthesizer, recognizer: SpeechRecognizer) -> None:
    heard = recognizer.transcribe(to_16k(speak(piper, ANSWER), piper.sample_rate))
    normalize = EnglishTextNormalizer()
    for phrase in ("3.2", "spiculated nodule", "right upper lobe", "pleural effusion", "follow up ct", "3 months"):
        assert phrase in normalize(heard.text), heard.text


def test_streaming_yields_the_first_sentence_before_making_the_rest(piper: PiperSynthesizer) -> None:
    calls: list[str] = []

    class Counting:
        name, sample_rate = piper.name, piper.sample_rate

        def synthesize_sentence(self, text: str):  # type: ignore[no-untyped-def]
            calls.append(text)
            return piper.synthesize_sentence(text)

    stream = stream_speech(Counting(), ANSWER)
    first = next(stream)
    assert first.index == 0 and len(calls) == 1 and first.duration_s > 0.5
    rest = list(stream)
    assert [chunk.index for chunk in rest] == [1, 2] and len(calls) == 3


def test_chunks_encode_as_playable_wav_and_ogg_opus(piper: PiperSynthesizer) -> None:
    for chunk in stream_speech(piper, ANSWER):
        for data in (wav_bytes(chunk.samples, chunk.sample_rate), ogg_opus_bytes(chunk.samples, chunk.sample_rate)):
            decoded = decode_audio(data)
            assert decoded.duration_s == pytest.approx(chunk.duration_s, abs=0.08)


def test_sentence_splitting_keeps_decimals_and_abbreviations() -> None:
    assert split_sentences("A 3.2 cm nodule. Dr. Lee agreed, e.g. on CT! Next?") == [
        "A 3.2 cm nodule.",
        "Dr. Lee agreed, e.g. on CT!",
        "Next?",
    ]


def test_bad_text_and_missing_engines_are_clear_errors(
    piper: PiperSynthesizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SynthesisError, match="no text"):
        speak(piper, "   ")
    with pytest.raises(SynthesisError, match="longer than"):
        speak(piper, "word " * 10_000)
    monkeypatch.setattr(tts, "piper_voice_files", lambda: None)
    with pytest.raises(SynthesisError, match="omniclinic\\[piper\\]"):
        tts.load_synthesizer("piper")
    monkeypatch.setattr(tts.shutil, "which", lambda _: None)
    with pytest.raises(SynthesisError, match="espeak-ng is not installed"):
        EspeakSynthesizer()


def test_without_piper_auto_falls_back_to_espeak(espeak: EspeakSynthesizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "piper_voice_files", lambda: None)
    assert tts.load_synthesizer("auto").name == "espeak"
