from __future__ import annotations

import json
from pathlib import Path

import pytest

from medical_data.errors import NotesRejected
from medical_data.notes import Note, StudyKey, pair_notes, read_notes

UID = "1.2.826.0.1.3680043.8.498.1"


def test_text_file_named_by_accession_or_uid(tmp_path: Path) -> None:
    (tmp_path / "ACC123.txt").write_text("\ufeffNo acute findings.\n", encoding="utf-8")
    (tmp_path / f"{UID}.txt").write_text("Stable nodule.", encoding="utf-8")
    assert read_notes(tmp_path / "ACC123.txt") == [
        Note("No acute findings.", "ACC123", "", str(tmp_path / "ACC123.txt"))
    ]
    assert read_notes(tmp_path / f"{UID}.txt")[0].study_instance_uid == UID


def test_csv_json_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("accession_number,text\nA1,Clear lungs.\nA2,\n", encoding="utf-8")
    (tmp_path / "r.json").write_text(json.dumps([{"study_instance_uid": UID, "report": "Fracture."}]))
    (tmp_path / "r.jsonl").write_text('{"accession_number": "A3", "findings": "Effusion."}\n\n')
    assert [n.text for n in read_notes(tmp_path / "r.csv")] == ["Clear lungs."]  # the empty row is skipped
    assert read_notes(tmp_path / "r.json")[0].study_instance_uid == UID
    assert read_notes(tmp_path / "r.jsonl")[0].accession_number == "A3"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.json", b"{not json"),
        ("bad.jsonl", b"[1, 2]\n"),
        ("latin.txt", "Befund: \xe4".encode("latin-1")),
        ("x.docx", b"PK"),
    ],
)
def test_bad_notes_are_typed(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(NotesRejected):
        read_notes(tmp_path / name)


def test_pairing_by_uid_then_accession() -> None:
    studies = [StudyKey(UID, "A1"), StudyKey("1.2.3.9", "")]
    notes = [
        Note("by uid", study_instance_uid=UID),
        Note("by accession", accession_number="A1"),
        Note("orphan", accession_number="ZZZ"),
    ]
    pairing = pair_notes(notes, studies)
    assert [n.text for n in pairing.paired[UID]] == ["by uid", "by accession"]
    assert [n.text for n in pairing.unpaired] == ["orphan"]


def test_an_accession_number_shared_by_two_studies_pairs_nothing() -> None:
    """Two patients' studies with one accession number (sites reuse them): the note is refused, not guessed."""
    studies = [StudyKey(UID, "A1"), StudyKey("1.2.3.9", "A1")]
    notes = [Note("by accession", accession_number="A1"), Note("by uid", study_instance_uid="1.2.3.9")]
    pairing = pair_notes(notes, studies)
    assert [(note.text, reason) for note, reason in pairing.ambiguous] == [
        ("by accession", "its accession number belongs to 2 studies; give the study UID to pair it")
    ]
    assert {uid: [n.text for n in found] for uid, found in pairing.paired.items()} == {"1.2.3.9": ["by uid"]}


def test_a_note_whose_uid_and_accession_disagree_pairs_nothing() -> None:
    studies = [StudyKey(UID, "A1")]
    note = Note("which one?", accession_number="A1", study_instance_uid="1.2.3.999")
    pairing = pair_notes([note], studies)
    assert pairing.paired == {} and [reason for _, reason in pairing.ambiguous] == [
        "its study UID and its accession number name different studies"
    ]
