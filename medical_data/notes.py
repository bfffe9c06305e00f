"""Report notes (plain text, CSV, JSON, JSON lines) paired to studies by accession number or study UID.

- ``.txt``: one report per file; the file name (without suffix) is the accession number or the
  study UID it belongs to.
- ``.csv``: a header row with ``accession_number`` and/or ``study_instance_uid`` and ``text`` (or
  ``report``) columns.
- ``.json``: an object or a list of objects with those keys; ``.jsonl``: one object per line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from medical_data.errors import NotesRejected
from medical_data.files import size_within

NOTE_SUFFIXES = frozenset({".txt", ".csv", ".json", ".jsonl"})
MAX_NOTES_BYTES = 20 * 1024 * 1024
TEXT_KEYS = ("text", "report", "report_text", "findings")


@dataclass(frozen=True)
class Note:
    text: str
    accession_number: str = ""
    study_instance_uid: str = ""
    source: str = ""


def _decode(path: Path) -> str:
    size_within(path, MAX_NOTES_BYTES, what="notes", limit_error=NotesRejected, read_error=NotesRejected)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise NotesRejected("notes file is not UTF-8 text") from None


def _from_mapping(row: Mapping[str, object], source: str) -> Note | None:
    text = next((str(row[key]) for key in TEXT_KEYS if row.get(key)), "")
    accession = str(row.get("accession_number") or row.get("AccessionNumber") or "").strip()
    study_uid = str(row.get("study_instance_uid") or row.get("StudyInstanceUID") or "").strip()
    if not text.strip() or not (accession or study_uid):
        return None
    return Note(text.strip(), accession, study_uid, source)


def read_notes(path: Path) -> list[Note]:
    """Read the notes in one file.

    Raises:
        NotesRejected: unreadable, too large, not UTF-8, malformed CSV/JSON, or an unknown suffix.
    """
    suffix = path.suffix.lower()
    if suffix not in NOTE_SUFFIXES:
        raise NotesRejected(f"not a notes file (expected one of {', '.join(sorted(NOTE_SUFFIXES))})")
    text = _decode(path)
    if suffix == ".txt":
        key = path.stem.strip()
        is_uid = key.replace(".", "").isdigit() and "." in key
        return [Note(text.strip(), "" if is_uid else key, key if is_uid else "", str(path))] if text.strip() else []
    try:
        if suffix == ".csv":
            rows: Iterable[Mapping[str, object]] = list(csv.DictReader(io.StringIO(text)))
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text)
            rows = loaded if isinstance(loaded, list) else [loaded]
    except (json.JSONDecodeError, csv.Error) as exc:
        raise NotesRejected(f"malformed {suffix[1:].upper()} ({type(exc).__name__})") from None
    if not all(isinstance(row, Mapping) for row in rows):
        raise NotesRejected(f"{suffix[1:].upper()} rows must be objects")
    return [note for row in rows if (note := _from_mapping(row, str(path))) is not None]


@dataclass(frozen=True)
class StudyKey:
    """What a note can be matched on."""

    study_instance_uid: str
    accession_number: str


def pair_notes(notes: Iterable[Note], studies: Iterable[StudyKey]) -> tuple[dict[str, list[Note]], list[Note]]:
    """Pair notes to studies: by study UID first, then by accession number.

    Returns:
        (notes by study UID, notes that match no study).
    """
    by_uid = {study.study_instance_uid: study for study in studies}
    by_accession = {study.accession_number: study for study in by_uid.values() if study.accession_number}
    paired: dict[str, list[Note]] = {}
    unpaired: list[Note] = []
    for note in notes:
        study = by_uid.get(note.study_instance_uid) or by_accession.get(note.accession_number)
        if study is None:
            unpaired.append(note)
        else:
            paired.setdefault(study.study_instance_uid, []).append(note)
    return paired, unpaired
