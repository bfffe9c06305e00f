"""A hospital folder of studies and reports to a de-identified training dataset, resumably.

Layout written under ``out_dir``::

    dicom/STUDY/SERIES/SOP.dcm   de-identified instances (names are de-identified UIDs)
    reports/STUDY.txt            the study's report notes, identifiers removed
    cache/                       MONAI PersistentDataset entries: each series as model-ready tensors
    manifest.jsonl               one line per series: UIDs, modality, files, report, cache status

Nothing under ``out_dir`` holds an input path or an original identifier. The resume state (input
path, size and mtime to outcome) lives in ``state_path``, outside the dataset, in the operator's
private data folder. A rerun skips every input the state lists as done, so an interrupted run goes
on where it stopped; the manifest and reports are rebuilt from the state each run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from monai.data import PersistentDataset
from monai.transforms import Compose

from medical_data.deid.batch import FileOutcome, deidentify_one
from medical_data.deid.dicom import DicomDeidentifier
from medical_data.deid.text import KnownIdentifiers, TextScrubber
from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, read_dicom
from medical_data.discovery import InputFile, Rejection, iter_input_files
from medical_data.errors import MedicalDataError
from medical_data.notes import NOTE_SUFFIXES, Note, StudyKey, pair_notes, read_notes
from medical_data.transforms import (
    DEFAULT_MAX_PIXELS,
    LoadSeriesd,
    NativeResolutionResized,
    SelectFramesd,
    persistent_dataset,
)

MANIFEST_NAME = "manifest.jsonl"


@dataclass
class IngestSummary:
    written: int = 0
    already_done: int = 0
    quarantined: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    series: int = 0
    cached_series: int = 0
    uncached_series: list[tuple[str, str]] = field(default_factory=list)
    notes_paired: int = 0
    notes_unpaired: int = 0
    source_studies: set[str] = field(default_factory=set, repr=False)
    """Original Study Instance UIDs read in this run (for the caller's audit trail; never written here)."""

    @property
    def clean(self) -> bool:
        return not self.rejected and not self.quarantined and not self.uncached_series


def _input_key(item: InputFile) -> str:
    stat = item.path.stat()
    return f"{item.display_name}|{stat.st_size}|{stat.st_mtime_ns}"


def _load_state(state_path: Path) -> dict[str, dict[str, object]]:
    state: dict[str, dict[str, object]] = {}
    if not state_path.exists():
        return state
    for line in state_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: that input is simply done again
        state[record["key"]] = record
    return state


def _write_text_atomically(destination: Path, text: str) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".partial-", dir=destination.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _study_identities(items: Iterable[InputFile], limits: DicomLimits) -> dict[str, tuple[str, KnownIdentifiers]]:
    """Original study UID -> (accession number, identifiers of its patient), from headers only."""
    studies: dict[str, tuple[str, KnownIdentifiers]] = {}
    for item in items:
        try:
            header = read_dicom(item.path, limits=limits, stop_before_pixels=True)
            uid = str(header.StudyInstanceUID)
        except (MedicalDataError, AttributeError):
            continue
        accession, known = studies.get(uid, (str(header.get("AccessionNumber", "")), KnownIdentifiers()))
        studies[uid] = (accession, known | KnownIdentifiers.from_dataset(header))
    return studies


def ingest_folder(
    source: Path,
    out_dir: Path,
    deidentifier: DicomDeidentifier,
    *,
    state_path: Path,
    work_dir: Path,
    scrubber: TextScrubber | None = None,
    cache: bool = True,
    max_frames: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limits: DicomLimits = DEFAULT_LIMITS,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest ``source`` into ``out_dir``; see the module docstring for the layout."""
    summary = IngestSummary()
    rejected: list[Rejection] = []
    items = list(iter_input_files([source], extract_dir=work_dir, rejected=rejected))
    note_files = [item for item in items if item.path.suffix.lower() in NOTE_SUFFIXES]
    dicom_items = [item for item in items if item.path.suffix.lower() not in NOTE_SUFFIXES]
    summary.rejected.extend(rejected)

    state = _load_state(state_path)
    written_uids = {Path(str(r["output"])).stem for r in state.values() if r.get("output")}
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path, "a", encoding="utf-8") as state_file:
        for done, item in enumerate(dicom_items, start=1):
            key = _input_key(item)
            if key in state:
                summary.already_done += 1
            else:
                outcome = deidentify_one(item, out_dir / "dicom", deidentifier, limits, written_uids)
                if outcome.source_study_uid:
                    summary.source_studies.add(outcome.source_study_uid)
                record = _state_record(key, outcome, out_dir)
                state[key] = record
                state_file.write(json.dumps(record) + "\n")
                state_file.flush()
                summary.written += outcome.status == "written"
            _count_failure(summary, item, state[key])
            if on_progress is not None:
                on_progress(done, len(dicom_items))

    reports = _write_reports(note_files, dicom_items, out_dir, deidentifier, scrubber, limits, summary)
    series = _series_from_state(state)
    summary.series = len(series)
    cache_errors = _warm_cache(series, out_dir, max_frames, max_pixels, summary) if cache else {}
    lines = []
    for (study_uid, series_uid), files in sorted(series.items()):
        header = read_dicom(out_dir / files[0], stop_before_pixels=True)
        lines.append(
            json.dumps(
                {
                    "study_uid": study_uid,
                    "series_uid": series_uid,
                    "modality": str(header.get("Modality", "")),
                    "body_part": str(header.get("BodyPartExamined", "")),
                    "instances": len(files),
                    "files": files,
                    "report": reports.get(study_uid),
                    "cached": cache and series_uid not in cache_errors,
                    "cache_error": cache_errors.get(series_uid),
                }
            )
        )
    _write_text_atomically(out_dir / MANIFEST_NAME, "".join(line + "\n" for line in lines))
    return summary


def _state_record(key: str, outcome: FileOutcome, out_dir: Path) -> dict[str, object]:
    output = str(Path(outcome.output).relative_to(out_dir)) if outcome.output else None
    return {"key": key, "status": outcome.status, "code": outcome.code, "reason": outcome.reason, "output": output}


def _count_failure(summary: IngestSummary, item: InputFile, record: dict[str, object]) -> None:
    if record["status"] == "quarantined":
        summary.quarantined += 1
    elif record["status"] == "rejected" and record["code"] != "duplicate_instance":
        summary.rejected.append(Rejection(item.display_name, str(record["code"]), str(record["reason"])))


def _series_from_state(state: dict[str, dict[str, object]]) -> dict[tuple[str, str], list[str]]:
    series: dict[tuple[str, str], list[str]] = {}
    for record in state.values():
        if record.get("output"):
            _, study_uid, series_uid, _ = Path(str(record["output"])).parts
            series.setdefault((study_uid, series_uid), []).append(str(record["output"]))
    return {key: sorted(files) for key, files in series.items()}


def _write_reports(
    note_files: list[InputFile],
    dicom_items: list[InputFile],
    out_dir: Path,
    deidentifier: DicomDeidentifier,
    scrubber: TextScrubber | None,
    limits: DicomLimits,
    summary: IngestSummary,
) -> dict[str, str]:
    """Pair notes to studies, remove identifiers, write ``reports/STUDY.txt``; return study -> path."""
    if not note_files:
        return {}
    notes: list[Note] = []
    for item in note_files:
        try:
            notes.extend(read_notes(item.path, item.display_name))
        except MedicalDataError as exc:
            summary.rejected.append(Rejection(item.display_name, exc.code, exc.reason))
    studies = _study_identities(dicom_items, limits)
    pairing = pair_notes(notes, [StudyKey(uid, accession) for uid, (accession, _) in studies.items()])
    summary.notes_unpaired = len(pairing.unpaired)
    for note, reason in pairing.ambiguous:
        summary.rejected.append(Rejection(_note_name(note), "ambiguous_accession", reason))
    scrubber = scrubber or TextScrubber()
    reports: dict[str, str] = {}
    for original_uid, study_notes in pairing.paired.items():
        known = studies[original_uid][1]
        text = "\n\n".join(scrubber.scrub(note.text, known).text for note in study_notes)
        new_uid = deidentifier.remap_uid(original_uid)
        relative = f"reports/{new_uid}.txt"
        _write_text_atomically(out_dir / relative, text + "\n")
        reports[new_uid] = relative
        summary.notes_paired += len(study_notes)
    return reports


def _note_name(note: Note) -> str:
    """Which note, without its accession number: the file, and the row within it for tables."""
    return f"{note.source} row {note.row}" if note.row else note.source


def model_input_transform(root: Path, max_frames: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> Compose:
    """The deterministic chain cached by ingest: load a series, sample frames, resize to the patch grid."""
    return Compose(
        [
            LoadSeriesd("image", root=root),
            SelectFramesd("image", max_frames=max_frames),
            NativeResolutionResized("image", max_pixels=max_pixels),
        ]
    )


def cached_dataset(out_dir: Path, max_frames: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> PersistentDataset:
    """The ingested series as a MONAI PersistentDataset over ``out_dir/cache`` (what training reads).

    Records are ``{"image": [relative files], "series_uid": ...}``; MONAI keys the cache on them, so
    the entries ``ingest_folder`` warmed are served without decoding DICOM again.
    """
    records = []
    for line in (out_dir / MANIFEST_NAME).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("cache_error") is None:
            records.append(_cache_record(entry["files"], entry["series_uid"]))
    return persistent_dataset(records, model_input_transform(out_dir, max_frames, max_pixels), out_dir / "cache")


def _cache_record(files: list[str], series_uid: str) -> dict[str, object]:
    """The record MONAI's cache is keyed on: warming (ingest) and reading (training) must build it alike."""
    return {"image": files, "series_uid": series_uid}


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _warm_cache(
    series: dict[tuple[str, str], list[str]], out_dir: Path, max_frames: int, max_pixels: int, summary: IngestSummary
) -> dict[str, str]:
    """Fill MONAI's persistent cache with each series as model-ready tensors; return series -> error."""
    records = [_cache_record(files, series_uid) for (_, series_uid), files in sorted(series.items())]
    dataset = persistent_dataset(records, model_input_transform(out_dir, max_frames, max_pixels), out_dir / "cache")
    errors: dict[str, str] = {}
    for index, record in enumerate(records):
        try:
            dataset[index]
            summary.cached_series += 1
        except Exception as exc:  # MONAI wraps a transform's error in (nested) RuntimeErrors
            cause = _root_cause(exc)
            reason = cause.reason if isinstance(cause, MedicalDataError) else f"not loadable ({type(cause).__name__})"
            errors[record["series_uid"]] = reason
            summary.uncached_series.append((record["series_uid"], reason))
    return errors
