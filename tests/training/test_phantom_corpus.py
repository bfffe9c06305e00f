"""The synthetic corpus: splits by seed, held-out phrasings only in the test split, loadable conversations."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from medical_data.phantoms import HELD_OUT_PHRASINGS, TRAINING_PHRASINGS
from training.conversations import load_conversations
from training.phantom_corpus import SPLITS, build_corpus, split_of


def phrasing_of(question: str, phrasings: dict[str, tuple[str, ...]]) -> bool:
    findings = ("pleural effusion", "pneumothorax", "nodule", "mass")
    return any(question == p.format(finding=f) for options in phrasings.values() for p in options for f in findings)


def test_the_corpus_is_split_by_seed_and_the_test_split_is_asked_in_other_words(tmp_path: Path) -> None:
    counts = build_corpus(tmp_path / "a", studies=24, seed=3)

    assert sum(counts.studies.values()) == 24 and all(counts.studies[s] for s in SPLITS)
    for split in SPLITS:
        records = [json.loads(line) for line in (tmp_path / "a" / split / "questions.jsonl").read_text().splitlines()]
        assert len(records) == counts.questions[split]
        held_out = split == "test"
        assert all(phrasing_of(r["question"], HELD_OUT_PHRASINGS if held_out else TRAINING_PHRASINGS) for r in records)
        assert not any(
            phrasing_of(r["question"], TRAINING_PHRASINGS if held_out else HELD_OUT_PHRASINGS) for r in records
        )
        for record in records:  # each answer agrees with the study's ground truth
            truth = json.loads((tmp_path / "a" / split / record["study"] / "ground_truth.json").read_text())
            if record["kind"] == "count":
                assert record["answer"] == str(len(truth["findings"]["lesions"]))
            if record["kind"] == "presence_effusion":
                assert record["answer"] == ("yes" if truth["findings"]["effusion"] else "no")
        conversations = load_conversations(tmp_path / "a" / split / "conversations.jsonl")
        assert len(conversations) == counts.conversations[split]
        assert {c.group for c in conversations} <= {f"phantom-3-{r['study'][-5:]}" for r in records}
    again = build_corpus(tmp_path / "b", studies=24, seed=3)
    assert again == counts
    assert (tmp_path / "a" / "test" / "questions.jsonl").read_text() == (
        tmp_path / "b" / "test" / "questions.jsonl"
    ).read_text()
    assert [split_of(3, i) for i in range(24)] == [split_of(3, i) for i in range(24)]


def test_the_phantoms_command_writes_the_corpus(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["phantoms", "--out", str(tmp_path / "corpus"), "--studies", "6", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and (tmp_path / "corpus" / "train" / "conversations.jsonl").is_file()


def test_spoken_questions_are_written_as_audio_the_model_hears(tmp_path: Path) -> None:
    from medical_data.audio import decode_audio

    build_corpus(tmp_path, studies=3, seed=5, spoken_fraction=1.0)
    split = next(tmp_path / s for s in SPLITS if (tmp_path / s / "audio").is_dir())
    records = [json.loads(line) for line in (split / "questions.jsonl").read_text().splitlines()]
    spoken = [r for r in records if r.get("audio")]
    assert spoken and all(r["closed"] for r in spoken)
    audio = decode_audio(split / spoken[0]["audio"])
    assert 0.5 < len(audio.samples) / audio.sample_rate < 10
    conversations = load_conversations(split / "conversations.jsonl")
    heard = [c for c in conversations if c.id.endswith("-spoken")]
    assert len(heard) == len(spoken)
    assert all(part.kind != "text" for part in heard[0].turns[1].parts)  # the question is only heard


def test_the_same_seed_asks_the_same_questions_aloud(tmp_path: Path) -> None:
    # Piper's voice never speaks a sentence twice the same: that must not change which questions are spoken
    def spoken(folder: Path) -> list[str]:
        build_corpus(folder, studies=4, seed=2, spoken_fraction=0.5)
        lines = [line for s in SPLITS for line in (folder / s / "questions.jsonl").read_text().splitlines()]
        return [record["id"] for record in map(json.loads, lines) if record.get("audio")]

    first = spoken(tmp_path / "a")
    assert first and first == spoken(tmp_path / "b")
