"""The conversation format: every line validated, the wrong one named; ingested datasets become conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from medical_data.deid import DicomDeidentifier
from medical_data.deid.fingerprints import FINGERPRINTS_NAME, IdentifierFingerprints
from medical_data.ingest import ingest_folder
from training.conversations import ConversationFormatError, load_conversations, write_conversations
from training.data import clean
from training.make_conversations import FINDINGS_QUESTION, conversations_from_dataset

from ..medical_data.conftest import patient_series
from .conftest import make_conversations

SECRET = b"training-test-site-secret-000000"
GOOD = {"messages": [{"role": "user", "content": "Any effusion?"}, {"role": "assistant", "content": "No."}]}


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_a_written_file_loads_back_the_same(tmp_path: Path) -> None:
    source = make_conversations(tmp_path / "a", count=3)
    conversations = load_conversations(source)
    assert [c.id for c in conversations] == ["c0", "c1", "c2"]
    assert [p.kind for p in conversations[0].turns[0].parts] == ["image", "audio", "text"]
    copy = tmp_path / "elsewhere" / "copy.jsonl"
    write_conversations(copy, conversations)  # paths rewritten relative to the new file
    assert load_conversations(copy) == conversations


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "not JSON"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "doctor", "content": "x"}, {"role": "assistant", "content": "y"}]}, "role 'doctor'"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]}]}, "unknown part type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": "missing.png"}]},
                    GOOD["messages"][1],
                ]
            },
            "does not exist",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "colour": 1}]},
                    GOOD["messages"][1],
                ]
            },
            "only 'type' and 'text'",
        ),
        (
            {
                "messages": [
                    GOOD["messages"][0],
                    {"role": "assistant", "content": [{"type": "image", "image": "a.png"}]},
                ]
            },
            "belongs to a user turn",
        ),
        ({"messages": GOOD["messages"], "patient": "x"}, "unknown keys patient"),
        ({"messages": [*GOOD["messages"], {"role": "user", "content": "and?"}]}, "last message must be the assistant"),
    ],
)
def test_a_malformed_line_is_named_with_its_reason(tmp_path: Path, bad: object, reason: str) -> None:
    path = _write(tmp_path / "set.jsonl", [GOOD, "", GOOD, bad, GOOD])
    with pytest.raises(ConversationFormatError, match=f"set.jsonl line 4: .*{reason}") as error:
        load_conversations(path)
    assert error.value.line == 4


def _study(name: str, patient_id: str, accession: str) -> list[Dataset]:
    slices = patient_series(name, patient_id, accession)
    for ds in slices:
        ds.BodyPartExamined = "CHEST"
    return slices


@pytest.fixture
def ingested(tmp_path: Path) -> Path:
    for folder, (name, patient_id, accession) in enumerate(
        [("Rivera^Tomas", "H100", "ACC1"), ("Okafor^Ngozi", "H200", "ACC2")]
    ):
        for index, ds in enumerate(_study(name, patient_id, accession)):
            (tmp_path / "in" / str(folder)).mkdir(parents=True, exist_ok=True)
            ds.save_as(tmp_path / "in" / str(folder) / f"{index}.dcm", enforce_file_format=True)
    (tmp_path / "in" / "notes.csv").write_text(
        'accession_number,text\nACC1,"Small left pleural effusion."\nACC2,"No acute findings."\n', encoding="utf-8"
    )
    out = tmp_path / "dataset"
    deidentifier = DicomDeidentifier(site_secret=SECRET, redactor=None)
    ingest_folder(tmp_path / "in", out, deidentifier, state_path=tmp_path / "state.jsonl", work_dir=tmp_path / "work")
    return out


def test_an_ingested_dataset_becomes_report_and_header_conversations(ingested: Path) -> None:
    conversations, counts = conversations_from_dataset(ingested)
    assert (counts.studies, counts.reports) == (2, 2)
    findings = [c for c in conversations if c.turns[0].parts[1].value == FINDINGS_QUESTION]
    answers = sorted(c.turns[1].parts[0].value for c in findings)
    assert answers == ["No acute findings.", "Small left pleural effusion."]
    closed = {c.turns[0].parts[1].value: c.turns[1].parts[0].value for c in conversations if c not in findings}
    assert closed["Which imaging modality is this?"] == "Computed tomography (CT)."
    assert closed["Which body part was examined?"] == "Chest."
    assert closed["How many images does this series hold?"] == "2 images."
    assert all(Path(c.turns[0].parts[0].value).is_dir() for c in conversations)
    assert len({c.group for c in conversations}) == 2  # one group per study, for the validation split
    text = json.dumps([c.to_json() for c in conversations])
    for identifier in ("Rivera", "Okafor", "H100", "H200", "ACC1", "ACC2"):
        assert identifier not in text


def test_the_identifier_check_drops_text_naming_a_patient_of_the_dataset(ingested: Path, tmp_path: Path) -> None:
    conversations, _ = conversations_from_dataset(ingested)
    fingerprints = IdentifierFingerprints.load(ingested / FINGERPRINTS_NAME, SECRET)
    stored = (ingested / FINGERPRINTS_NAME).read_text()
    assert "Rivera" not in stored and "H100" not in stored  # fingerprints, never values
    leaked = _write(
        tmp_path / "leaked.jsonl",
        [
            {
                "id": "leak",
                "messages": [
                    {"role": "user", "content": "Who is this?"},
                    {"role": "assistant", "content": "Tomas  RIVERA, MRN h100."},
                ],
            }
        ],
    )
    kept, report = clean([*conversations, *load_conversations(leaked)], fingerprints=fingerprints)
    assert report.identifiers_found == 1 and report.dropped_ids == ["leak"]
    disguised = ["Ｒｉｖｅｒａ was seen", "Mr Rive\u200bra", "patient Rivéra", "id H-100", "OKAFOR NGOZI"]
    assert all(fingerprints.matches(text) for text in disguised), [fingerprints.matches(t) for t in disguised]
    assert not fingerprints.matches("Small left pleural effusion.")
    assert len(kept) == len(conversations)
    with pytest.raises(Exception, match="another site secret"):
        IdentifierFingerprints.load(ingested / FINGERPRINTS_NAME, b"another-site-secret-000000000000")


def test_retrain_fine_tunes_on_the_dataset_and_reports_held_out_figures(ingested: Path, tmp_path: Path) -> None:
    from training.retrain import retrain

    for extra in range(3):  # more studies, so that some can be held out
        for index, ds in enumerate(_study(f"Extra^Patient{extra}", f"X{extra}", f"ACX{extra}")):
            ds.save_as(tmp_path / f"more{extra}_{index}.dcm", enforce_file_format=True)
    deidentifier = DicomDeidentifier(site_secret=SECRET, redactor=None)
    source = tmp_path / "in"
    for path in tmp_path.glob("more*.dcm"):
        path.rename(source / path.name)
    ingest_folder(source, ingested, deidentifier, state_path=tmp_path / "state2.jsonl", work_dir=tmp_path / "work2")
    fingerprints = IdentifierFingerprints.load(ingested / FINGERPRINTS_NAME, SECRET)
    assert fingerprints.matches("Tomas Rivera") and fingerprints.matches("Extra Patient2")  # both ingests covered
    result = retrain(ingested, "tiny", tmp_path / "model", max_steps=12, fingerprints=fingerprints)
    card = (result.model_dir / "MODEL_CARD.md").read_text()
    assert "12 optimizer steps" in card and "held out" in card
    summary = json.loads((result.model_dir / "training.json").read_text())
    assert summary["dataset"]["studies"] == 5 and summary["dataset"]["held_out_groups"] >= 1
    assert result.after.loss < result.before.loss  # it learnt something that carries to unseen studies
    assert result.before.closed_questions == result.after.closed_questions > 0
    from omni_core import OmniForConditionalGeneration

    OmniForConditionalGeneration.from_pretrained(result.model_dir)
    assert (result.model_dir / "loss.png").is_file() and not (tmp_path / ".model.run").exists()
