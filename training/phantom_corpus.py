"""The default model's synthetic corpus: phantom chest studies, their questions and reference reports, split.

``build_corpus(out, studies=N, seed=S)`` writes, for each split (``train``, ``validation``, ``test``):

- ``SPLIT/studies/NNNNN/``: one study (a CT series or a radiograph) with its ``ground_truth.json``;
- ``SPLIT/conversations.jsonl``: the training format (``training.conversations``), one conversation
  per question and one per report (the drafting prompt answered with the reference report);
- ``SPLIT/questions.jsonl``: what evaluation asks, one line per question: the study, the question,
  the answer, its kind, whether it is closed, whether the study is stored reversed, and the id of the
  question's typed conversation;
- ``SPLIT/audio/``: with ``spoken_fraction``, closed questions also asked aloud (Piper at varied paces,
  espeak-ng voices, rates and pitches, noise), as a spoken conversation (the model hears the audio)
  and a ``questions.jsonl`` ``audio`` field.

Splits are drawn per study from the seed alone, so the same seed gives the same corpus. The test split
is held out: its questions use phrasings the other splits never use (``medical_data.phantoms``), and
nothing in this module lets it into training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medical_data.phantoms import (
    SERIES_FOLDER,
    Geometry,
    GroundTruth,
    question_answers,
    reference_report,
    sample_findings,
    write_cr_chest,
    write_ct_chest,
)
from medical_data.report_formats import DRAFT_REQUEST
from omni_core.prompts import SYSTEM_PROMPT
from omniclinic_common.files import write_atomically
from training.conversations import ContentPart, Conversation, Turn, write_conversations

SPLITS = ("train", "validation", "test")
REFERENCE_REPORT = "reference_report.txt"
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f4", "en-gb-scotland")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class CorpusCounts:
    studies: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    questions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    conversations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


def split_of(seed: int, index: int) -> str:
    draw = np.random.default_rng([seed, index, 7919]).random()
    cumulative = np.cumsum(SPLIT_FRACTIONS)
    return SPLITS[int(np.searchsorted(cumulative, draw, side="right"))]


def build_corpus(
    out: Path,
    *,
    studies: int,
    seed: int = 0,
    radiograph_fraction: float = 0.3,
    reversed_fraction: float = 0.25,
    spoken_fraction: float = 0.0,
    geometry: Geometry | None = None,
) -> CorpusCounts:
    """Write ``studies`` phantom studies into ``out`` split three ways (a folder written earlier is replaced)."""
    if studies < 1:
        raise ValueError("a corpus needs at least one study")
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    counts = CorpusCounts()
    conversations: dict[str, list[Conversation]] = {split: [] for split in SPLITS}
    questions: dict[str, list[str]] = {split: [] for split in SPLITS}
    for index in range(studies):
        split = split_of(seed, index)
        rng = np.random.default_rng([seed, index])
        findings = sample_findings(rng)
        reverse = bool(rng.random() < reversed_fraction)
        folder = out / split / "studies" / f"{index:05d}"
        if rng.random() < radiograph_fraction:
            truth = write_cr_chest(folder, findings, seed=seed * 1_000_003 + index, reversed_columns=reverse)
            media = ContentPart("image", str(folder / truth.files[0]))
        else:
            layout = dataclasses.replace(geometry or Geometry(), reversed_columns=reverse)
            truth = write_ct_chest(folder, findings, seed=seed * 1_000_003 + index, geometry=layout)
            media = ContentPart("series", str(folder / SERIES_FOLDER))
        counts.studies[split] += 1
        group = f"phantom-{seed}-{index:05d}"
        pairs = question_answers(truth, rng, held_out=split == "test")
        for number, pair in enumerate(pairs):
            typed = f"{group}-q{number}"
            conversations[split].append(_conversation(typed, group, media, pair.question, pair.answer))
            record = _question_record(folder, out / split, truth, pair, number) | {"conversation": typed}
            if pair.closed and rng.random() < spoken_fraction:  # the question asked aloud as well
                audio = out / split / "audio" / f"{folder.name}-q{number}.wav"
                speak_question(pair.question, audio, rng)
                record["audio"] = str(audio.relative_to(out / split))
                conversations[split].append(
                    _conversation(f"{group}-q{number}-spoken", group, media, pair.question, pair.answer, audio=audio)
                )
            questions[split].append(json.dumps(record))
        report = reference_report(truth)
        write_atomically(folder / REFERENCE_REPORT, report + "\n")
        conversations[split].append(_conversation(f"{group}-report", group, media, DRAFT_REQUEST, report))
        counts.questions[split] += len(pairs)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        counts.conversations[split] = write_conversations(out / split / "conversations.jsonl", conversations[split])
        write_atomically(out / split / "questions.jsonl", "".join(line + "\n" for line in questions[split]))
    return counts


def speak_question(text: str, target: Path, rng: np.random.Generator) -> None:
    """``text`` spoken by a varied speaker over noise at 15-35 dB SNR: Piper's voice at a varied pace a
    third of the time when Piper is installed, else an espeak-ng voice at a varied rate and pitch."""
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.tts import EspeakSynthesizer, PiperSynthesizer, piper_installed, speak

    synthesizer: EspeakSynthesizer | PiperSynthesizer
    use_piper = rng.random() < 1 / 3
    pace = float(rng.uniform(0.8, 1.25))
    voice = str(rng.choice(VOICES))
    words_per_minute, pitch = int(rng.integers(130, 200)), int(rng.integers(25, 75))
    if use_piper and piper_installed():
        synthesizer = _piper(round(pace * 20) / 20)
    else:
        synthesizer = EspeakSynthesizer(voice=voice, words_per_minute=words_per_minute, pitch=pitch)
    samples = speak(synthesizer, text)
    rms = float(np.sqrt(np.mean(samples**2))) or 1e-3
    level = rms / 10 ** (rng.uniform(15, 35) / 20)
    # the noise from a stream of its own: a clip's length (Piper's varies from run to run) then never
    # shifts the draws the rest of the corpus makes, so the same seed asks the same questions aloud
    noise = np.random.default_rng(rng.integers(2**63)).normal(0.0, level, size=samples.shape).astype(np.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, wav_bytes(samples + noise, synthesizer.sample_rate))


@functools.cache
def _piper(pace: float) -> Any:
    """Piper's voice at one pace, loaded once (the corpus uses a handful of paces)."""
    from omni_core.speech.tts import PiperSynthesizer, piper_voice_files

    return PiperSynthesizer(*piper_voice_files(), length_scale=pace)  # type: ignore[misc]


def _conversation(
    identifier: str, group: str, media: ContentPart, question: str, answer: str, *, audio: Path | None = None
) -> Conversation:
    asked = ContentPart("audio", str(audio)) if audio is not None else ContentPart("text", question)
    return Conversation(
        turns=(
            Turn("system", (ContentPart("text", SYSTEM_PROMPT),)),
            Turn("user", (media, asked)),
            Turn("assistant", (ContentPart("text", answer),)),
        ),
        id=identifier,
        group=group,
    )


def _question_record(folder: Path, base: Path, truth: GroundTruth, pair: object, number: int) -> dict[str, object]:
    return {
        "id": f"{folder.name}-q{number}",
        "study": str(folder.relative_to(base)),
        "modality": truth.modality,
        "question": pair.question,  # type: ignore[attr-defined]
        "answer": pair.answer,  # type: ignore[attr-defined]
        "kind": pair.kind,  # type: ignore[attr-defined]
        "closed": pair.closed,  # type: ignore[attr-defined]
        "reversed": truth.reversed_columns or truth.reversed_rows,
        "normal": truth.findings.normal,
    }
