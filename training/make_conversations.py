"""An ingested dataset (``omniclinic ingest``) to training conversations.

For each study with a report: the report is the answer to "Describe the findings." about the
study's main series (the one with the most images). For every series: closed questions whose
answers are header facts (modality, body part, number of images), asked open and as yes/no
questions. Every conversation's ``group`` is its patient (the pseudonym ingest gave), else its study, so a
held-out split never sees a patient it trained on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from training.conversations import ContentPart, Conversation, Turn

FINDINGS_QUESTION = "Describe the findings."
MODALITY_NAMES = {
    "CT": "computed tomography (CT)",
    "MR": "magnetic resonance imaging (MR)",
    "CR": "computed radiography (CR)",
    "DX": "digital radiography (DX)",
    "US": "ultrasound (US)",
    "MG": "mammography (MG)",
    "PT": "positron emission tomography (PT)",
    "NM": "nuclear medicine (NM)",
    "XA": "X-ray angiography (XA)",
    "RF": "fluoroscopy (RF)",
    "OT": "other (OT)",
    "SC": "secondary capture (SC)",
}


class DatasetError(ValueError):
    """The folder is not an ingested dataset, or its manifest is unreadable."""


@dataclass
class ConversationCounts:
    studies: int = 0
    series: int = 0
    reports: int = 0
    closed_questions: int = 0
    series_without_cache: int = 0


def _user(series: Path, question: str) -> Turn:
    return Turn("user", (ContentPart("series", str(series)), ContentPart("text", question)))


def _answer(text: str) -> Turn:
    return Turn("assistant", (ContentPart("text", text),))


def conversations_from_dataset(dataset: Path, *, seed: int = 0) -> tuple[list[Conversation], ConversationCounts]:
    """Every conversation ``dataset`` yields, in manifest order; yes/no distractors are seeded."""
    manifest = dataset / "manifest.jsonl"
    if not manifest.is_file():
        raise DatasetError(f"{dataset} is not an ingested dataset (no manifest.jsonl): run omniclinic ingest first")
    entries = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entry["study_uid"], entry["series_uid"], entry["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"manifest.jsonl line {number} is malformed") from None
        entries.append(entry)
    rng = random.Random(seed)
    counts = ConversationCounts(series=len(entries))
    conversations: list[Conversation] = []
    by_study: dict[str, list[dict]] = {}
    for entry in entries:
        by_study.setdefault(entry["study_uid"], []).append(entry)
    counts.studies = len(by_study)
    modalities = sorted({str(e.get("modality") or "") for e in entries} - {""}) or ["CT"]
    for study_uid, series_entries in by_study.items():
        usable = [e for e in series_entries if e.get("cached", True) is not False]
        counts.series_without_cache += len(series_entries) - len(usable)
        if not usable:
            continue
        main = max(usable, key=lambda e: (int(e.get("instances") or 0), e["series_uid"]))
        group = _patient_group(dataset, main) or study_uid
        report_path = main.get("report") or next((e.get("report") for e in usable if e.get("report")), None)
        if report_path and (dataset / str(report_path)).is_file():
            try:
                report = (dataset / str(report_path)).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                raise DatasetError(f"a report of study {len(conversations)} is not readable UTF-8 text") from None
            if report:
                folder = dataset / "dicom" / study_uid / main["series_uid"]
                conversations.append(
                    Conversation(
                        (_user(folder, FINDINGS_QUESTION), _answer(report)),
                        id=f"{main['series_uid']}:findings",
                        group=group,
                    )
                )
                counts.reports += 1
        for entry in usable:
            folder = dataset / "dicom" / study_uid / entry["series_uid"]
            questions = _closed_questions(entry, modalities, rng)
            for index, (question, answer) in enumerate(questions):
                conversations.append(
                    Conversation(
                        (_user(folder, question), _answer(answer)),
                        id=f"{entry['series_uid']}:q{index}",
                        group=group,
                    )
                )
            counts.closed_questions += len(questions)
    return conversations, counts


def _patient_group(dataset: Path, entry: dict) -> str:
    """The study's patient as de-identified (PatientID is a keyed pseudonym after ingest): a patient's
    earlier and later studies stay on one side of a split. Empty when the header has none."""
    from medical_data.dicom_io import read_dicom
    from medical_data.errors import MedicalDataError

    if not entry["files"]:
        return ""
    try:
        header = read_dicom(dataset / str(entry["files"][0]), stop_before_pixels=True)
    except (MedicalDataError, OSError):
        return ""
    pseudonym = str(header.get("PatientID", "") or "").strip()
    return f"patient:{pseudonym}" if pseudonym else ""


def _closed_questions(entry: dict, modalities: list[str], rng: random.Random) -> list[tuple[str, str]]:
    questions = []
    modality = str(entry.get("modality") or "").strip().upper()
    if modality:
        name = MODALITY_NAMES.get(modality, modality)
        questions.append(("Which imaging modality is this?", f"{name[0].upper()}{name[1:]}."))
        others = [m for m in (*modalities, *MODALITY_NAMES) if m != modality]
        asked = modality if rng.random() < 0.5 else rng.choice(others)
        answer = "Yes." if asked == modality else f"No, it is {MODALITY_NAMES.get(modality, modality)}."
        questions.append((f"Is this a {MODALITY_NAMES.get(asked, asked)} image?", answer))
    body_part = str(entry.get("body_part") or "").strip()
    if body_part:
        questions.append(("Which body part was examined?", f"{body_part.replace('_', ' ').capitalize()}."))
    instances = int(entry.get("instances") or 0)
    if instances:
        noun = "image" if instances == 1 else "images"
        questions.append(("How many images does this series hold?", f"{instances} {noun}."))
    return questions
