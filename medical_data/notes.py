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
from dataclasses import dataclass, field
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
    """The file it came from, as shown to the operator."""
    row: int = 0
    """Its row (1-based) in a CSV, JSON list or JSON-lines file; 0 for a text file."""


def _decode(path: Path) -> str:
    size_within(path, MAX_NOTES_BYTES, what="notes", limit_error=NotesRejected, read_error=NotesRejected)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise NotesRejected("notes file is not UTF-8 text") from None


def _from_mapping(row: Mapping[str, object], source: str, number: int) -> Note | None:
    text = next((str(row[key]) for key in TEXT_KEYS if row.get(key)), "")
    accession = str(row.get("accession_number") or row.get("AccessionNumber") or "").strip()
    study_uid = str(row.get("study_instance_uid") or row.get("StudyInstanceUID") or "").strip()
    if not text.strip() or not (accession or study_uid):
        return None
    return Note(text.strip(), accession, study_uid, source, number)


def read_notes(path: Path, display_name: str | None = None) -> list[Note]:
    """Read the notes in one file (``display_name``: how to name it in reports, the path by default).

    Raises:
        NotesRejected: unreadable, too large, not UTF-8, malformed CSV/JSON, or an unknown suffix.
    """
    suffix = path.suffix.lower()
    if suffix not in NOTE_SUFFIXES:
        raise NotesRejected(f"not a notes file (expected one of {', '.join(sorted(NOTE_SUFFIXES))})")
    text = _decode(path)
    source = display_name or str(path)
    if suffix == ".txt":
        key = path.stem.strip()
        is_uid = key.replace(".", "").isdigit() and "." in key
        return [Note(text.strip(), "" if is_uid else key, key if is_uid else "", source)] if text.strip() else []
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
    notes = (_from_mapping(row, source, number) for number, row in enumerate(rows, start=1))
    return [note for note in notes if note is not None]


@dataclass(frozen=True)
class StudyKey:
    """What a note can be matched on."""

    study_instance_uid: str
    accession_number: str


@dataclass
class NotePairing:
    """Where each note went: to one study, to none, or refused because it could belong to several."""

    paired: dict[str, list[Note]] = field(default_factory=dict)
    """Notes by original Study Instance UID."""
    unpaired: list[Note] = field(default_factory=list)
    """Notes that match no study."""
    ambiguous: list[tuple[Note, str]] = field(default_factory=list)
    """Notes refused with the reason (no identifying value in it): their accession number names more
    than one study, so a pairing would be a guess and the note could be scrubbed against, and filed
    under, the wrong patient."""


def pair_notes(notes: Iterable[Note], studies: Iterable[StudyKey]) -> NotePairing:
    """Pair notes to studies: by study UID first, then by an accession number that names one study only."""
    by_uid = {study.study_instance_uid: study for study in studies}
    by_accession: dict[str, list[StudyKey]] = {}
    for study in by_uid.values():
        if study.accession_number:
            by_accession.setdefault(study.accession_number, []).append(study)
    pairing = NotePairing()
    for note in notes:
        study = by_uid.get(note.study_instance_uid)
        if study is None and note.accession_number:
            candidates = by_accession.get(note.accession_number, [])
            if len(candidates) > 1:
                reason = f"its accession number belongs to {len(candidates)} studies; give the study UID to pair it"
                pairing.ambiguous.append((note, reason))
                continue
            study = candidates[0] if candidates else None
            if study is not None and note.study_instance_uid:  # its own UID names no study here
                pairing.ambiguous.append((note, "its study UID and its accession number name different studies"))
                continue
        if study is None:
            pairing.unpaired.append(note)
        else:
            pairing.paired.setdefault(study.study_instance_uid, []).append(note)
    return pairing
