"""A hospital folder of studies and reports to a de-identified training dataset, resumably.

Layout written under ``out_dir``::

    dicom/STUDY/SERIES/SOP.dcm   de-identified instances (names are de-identified UIDs)
    reports/STUDY.txt            the study's report notes, identifiers removed
    cache/                       MONAI PersistentDataset entries: each series as model-ready tensors
    manifest.jsonl               one line per series: UIDs, modality, files, report, cache status
    deid_fingerprints.json       keyed fingerprints of every header identifier removed, by every
                                 source ingested into it (no values; training checks its texts
                                 against them with the site secret)

Nothing under ``out_dir`` holds an input path or an original identifier. The resume state (input
path, size and mtime to outcome; for a zip member the zip and the member's index, CRC and size) lives
in ``state_path``, outside the dataset, in the operator's private data folder. A rerun skips every
input the state lists as done, so an interrupted run goes on where it stopped; the manifest and
reports are rebuilt from the state each run.

The cache key of a series is its record, which holds every setting of the transform chain
(``CacheSettings``): a rerun with other settings computes new entries and never returns old tensors.
Cached items keep their header facts and affine, so training sees what inference sees.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monai.transforms import Compose

from medical_data.deid.batch import FileOutcome, commit_staged, deidentify_staged
from medical_data.deid.dicom import DicomDeidentifier
from medical_data.deid.fingerprints import FINGERPRINTS_NAME
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
    SeriesCache,
    persistent_dataset,
)
from omniclinic_common.files import write_atomically

MANIFEST_NAME = "manifest.jsonl"
CACHE_FORMAT = 2
"""Bumped whenever the transform chain changes what it computes; part of every cache key."""
Progress = Callable[[str, int, int | None], None]
"""Called with (phase, done, total or None) as each phase goes: extracting, de-identifying,
pairing notes, caching."""


@dataclass(frozen=True)
class CacheSettings:
    """Every setting of the cached transform chain: all of it goes into each cache key."""

    max_frames: int = 32
    """Frames kept per series (evenly sampled)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """In-plane pixel budget of the native-resolution resize."""
    window: str | None = None
    """A named window preset (``lung``, ``brain``...) or None for the header's window."""

    def as_record(self) -> dict[str, object]:
        return {"format": CACHE_FORMAT, **asdict(self)}

    @classmethod
    def from_record(cls, record: dict[str, object]) -> CacheSettings:
        return cls(int(record["max_frames"]), int(record["max_pixels"]), record.get("window"))  # type: ignore[arg-type]


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
    cache_settings: CacheSettings = CacheSettings(),
    limits: DicomLimits = DEFAULT_LIMITS,
    workers: int = 1,
    on_progress: Progress | None = None,
) -> IngestSummary:
    """Ingest ``source`` into ``out_dir``; see the module docstring for the layout.

    Args:
        workers: processes that de-identify files in parallel (outputs are committed in input
            order, so the result is the same as with one).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    report = on_progress or (lambda phase, done, total: None)
    summary = IngestSummary()
    rejected: list[Rejection] = []
    items = []
    for item in iter_input_files([source], extract_dir=work_dir, rejected=rejected):
        items.append(item)
        report("extracting", len(items), None)
    note_files = [item for item in items if item.path.suffix.lower() in NOTE_SUFFIXES]
    dicom_items = [item for item in items if item.path.suffix.lower() not in NOTE_SUFFIXES]
    summary.rejected.extend(rejected)

    state = _load_state(state_path)
    written_uids = {Path(str(r["output"])).stem for r in state.values() if r.get("output")}
    keys = [item.resume_key() for item in dicom_items]
    pending = [(item, key) for item, key in zip(dicom_items, keys, strict=True) if key not in state]
    summary.already_done = len(dicom_items) - len(pending)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    stage_dir = work_dir / "staged"
    stage_dir.mkdir(parents=True, exist_ok=True)
    with open(state_path, "a", encoding="utf-8") as state_file:
        outcomes = _deidentify_all(pending, out_dir / "dicom", deidentifier, limits, workers, stage_dir)
        for done, ((_, key), staged) in enumerate(zip(pending, outcomes, strict=False), start=1):
            outcome = commit_staged(staged, written_uids)
            if outcome.source_study_uid:
                summary.source_studies.add(outcome.source_study_uid)
            record = _state_record(key, outcome, out_dir)
            state[key] = record
            state_file.write(json.dumps(record) + "\n")
            state_file.flush()
            summary.written += outcome.status == "written"
            report("de-identifying", done, len(pending))
    for item, key in zip(dicom_items, keys, strict=True):
        _count_failure(summary, item, state[key])

    studies = _study_identities(dicom_items, limits)
    fingerprints = deidentifier.identifier_fingerprints()
    if (out_dir / FINGERPRINTS_NAME).exists():  # earlier sources ingested into this dataset stay covered
        fingerprints.update_from(out_dir / FINGERPRINTS_NAME)
    for _, known in studies.values():
        fingerprints.add(known.values)
    fingerprints.save(out_dir / FINGERPRINTS_NAME)
    reports = _write_reports(note_files, studies, out_dir, deidentifier, scrubber, summary)
    report("pairing notes", 1, 1)
    series = _series_from_state(state)
    summary.series = len(series)
    cache_errors = _warm_cache(series, out_dir, cache_settings, summary, report) if cache else {}
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
                    "transform": cache_settings.as_record(),
                }
            )
        )
    write_atomically(out_dir / MANIFEST_NAME, "".join(line + "\n" for line in lines))
    return summary


def _deidentify_all(
    pending: list[tuple[InputFile, str]],
    dicom_dir: Path,
    deidentifier: DicomDeidentifier,
    limits: DicomLimits,
    workers: int,
    stage_dir: Path,
) -> Iterator[FileOutcome]:
    """Outcomes in input order; each output is staged under ``stage_dir`` for ``commit_staged``."""
    stages = [stage_dir / f"{index:08d}.dcm" for index in range(len(pending))]
    return deidentify_staged([item for item, _ in pending], stages, dicom_dir, deidentifier, limits, workers)


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
    studies: dict[str, tuple[str, KnownIdentifiers]],
    out_dir: Path,
    deidentifier: DicomDeidentifier,
    scrubber: TextScrubber | None,
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
        write_atomically(out_dir / relative, text + "\n")
        reports[new_uid] = relative
        summary.notes_paired += len(study_notes)
    return reports


def _note_name(note: Note) -> str:
    """Which note, without its accession number: the file, and the row within it for tables."""
    return f"{note.source} row {note.row}" if note.row else note.source


def model_input_transform(root: Path, settings: CacheSettings = CacheSettings()) -> Compose:
    """The deterministic chain cached by ingest: load a series, sample frames, resize to the patch grid."""
    return Compose(
        [
            LoadSeriesd("image", root=root, preset=settings.window),
            SelectFramesd("image", max_frames=settings.max_frames),
            NativeResolutionResized("image", max_pixels=settings.max_pixels),
        ]
    )


def cached_dataset(out_dir: Path, settings: CacheSettings | None = None) -> SeriesCache:
    """The ingested series as a cached MONAI dataset over ``out_dir/cache`` (what training reads).

    Items are ``{"image": MetaTensor (C, D, H, W), "series_uid": ..., "transform": ...}`` with the
    header facts and the affine in ``image.meta``. ``settings`` default to those ``ingest`` cached
    with, so its entries are served without decoding DICOM again; other settings compute new ones.
    """
    records = []
    for line in (out_dir / MANIFEST_NAME).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("cache_error") is None:
            chosen = settings or CacheSettings.from_record(entry.get("transform") or CacheSettings().as_record())
            records.append(_cache_record(entry["files"], entry["series_uid"], chosen))
    by_settings = {json.dumps(record["transform"], sort_keys=True) for record in records}
    if len(by_settings) > 1:
        raise MedicalDataError("the dataset was cached with different settings per series; pass settings=")
    chosen = settings or (CacheSettings.from_record(records[0]["transform"]) if records else CacheSettings())  # type: ignore[arg-type]
    return persistent_dataset(records, model_input_transform(out_dir, chosen), out_dir / "cache")


def _cache_record(files: list[str], series_uid: str, settings: CacheSettings) -> dict[str, object]:
    """The record MONAI's cache is keyed on: the files, and every setting of the transform chain."""
    return {"image": files, "series_uid": series_uid, "transform": settings.as_record()}


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _warm_cache(
    series: dict[tuple[str, str], list[str]],
    out_dir: Path,
    settings: CacheSettings,
    summary: IngestSummary,
    report: Progress,
) -> dict[str, str]:
    """Fill the persistent cache with each series as model-ready tensors; return series -> error."""
    records = [_cache_record(files, series_uid, settings) for (_, series_uid), files in sorted(series.items())]
    dataset = persistent_dataset(records, model_input_transform(out_dir, settings), out_dir / "cache")
    errors: dict[str, str] = {}
    for index, record in enumerate(records):
        try:
            dataset[index]
            summary.cached_series += 1
        except Exception as exc:  # MONAI wraps a transform's error in (nested) RuntimeErrors
            cause = _root_cause(exc)
            reason = cause.reason if isinstance(cause, MedicalDataError) else f"not loadable ({type(cause).__name__})"
            errors[str(record["series_uid"])] = reason
            summary.uncached_series.append((str(record["series_uid"]), reason))
        report("caching", index + 1, len(records))
    return errors
