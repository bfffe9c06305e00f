"""De-identify many files: one outcome per file in a JSON-lines report, the batch always carries on.

Outputs are named by their de-identified UIDs only (``STUDY/SERIES/SOP.dcm``), written atomically.
Report lines hold paths, statuses, reason codes and counts of actions: never an identifying value
from inside a file.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, TextIO

from medical_data.deid.dicom import DicomDeidentifier
from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, quiet_pydicom, read_dicom, write_atomically
from medical_data.discovery import DEFAULT_ARCHIVE_LIMITS, ArchiveLimits, InputFile, Rejection, iter_input_files
from medical_data.errors import MedicalDataError, MissingIdentityError

Status = Literal["written", "quarantined", "rejected"]


@dataclass(frozen=True)
class FileOutcome:
    input: str
    output: str | None
    status: Status
    code: str = ""
    reason: str = ""
    actions: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    source_study_uid: str = field(default="", repr=False)
    """The original Study Instance UID, for the caller's audit trail only: never in the report."""
    staged: str = field(default="", repr=False)
    """Where the file was written when a stage folder was given; ``commit_staged`` moves it to ``output``."""

    def report_line(self) -> str:
        line = asdict(self)
        del line["source_study_uid"], line["staged"]
        return json.dumps(line, sort_keys=True)


@dataclass
class BatchSummary:
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    source_studies: set[str] = field(default_factory=set, repr=False)
    """Original Study Instance UIDs that were read (for the audit trail, not for reports)."""

    @property
    def all_written(self) -> bool:
        return self.counts["written"] > 0 and not self.counts["quarantined"] and not self.counts["rejected"]

    def add(self, outcome: FileOutcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.source_study_uid:
            self.source_studies.add(outcome.source_study_uid)
        if outcome.code:
            self.reasons[outcome.code] += 1


def output_path(out_dir: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    return out_dir / study_uid / series_uid / f"{sop_uid}.dcm"


def deidentify_one(
    item: InputFile,
    out_dir: Path,
    deidentifier: DicomDeidentifier,
    limits: DicomLimits,
    written: set[str],
    *,
    stage: Path | None = None,
) -> FileOutcome:
    """Read, de-identify and write one file; every failure becomes an outcome, never an exception.

    With ``stage`` (a file path, for worker processes) the output is written there instead and not
    checked against ``written``: ``commit_staged``, in input order, moves it into place or drops a
    duplicate, so parallel runs keep the first copy exactly as serial runs do.
    """
    source_study = ""
    try:
        dataset = read_dicom(item.path, limits=limits)
        with quiet_pydicom():  # a malformed UID is quoted in pydicom's warning
            source_study = str(dataset.get("StudyInstanceUID", ""))
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                if not str(dataset.get(keyword, "") or "").strip():
                    raise MissingIdentityError(f"the object has no {keyword}; it cannot be filed")
        outcome = deidentifier.deidentify(dataset)
        sop_uid = str(dataset.SOPInstanceUID)
        destination = output_path(out_dir, str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), sop_uid)
        written_outcome = FileOutcome(
            item.display_name,
            str(destination),
            "written",
            actions=dict(outcome.actions),
            warnings=tuple(outcome.warnings),
            source_study_uid=source_study,
            staged=str(stage or ""),
        )
        if stage is not None:
            write_atomically(dataset, stage)
            return written_outcome
        if sop_uid in written:
            return _duplicate(item.display_name, source_study)
        write_atomically(dataset, destination)
        written.add(sop_uid)
        return written_outcome
    except MedicalDataError as exc:
        status: Status = "quarantined" if exc.code.startswith("quarantined") else "rejected"
        return FileOutcome(item.display_name, None, status, exc.code, exc.reason, source_study_uid=source_study)
    except AttributeError as exc:  # a required attribute (study or series UID) is absent
        return FileOutcome(
            item.display_name,
            None,
            "rejected",
            "missing_attribute",
            f"{type(exc).__name__}",
            source_study_uid=source_study,
        )
    except Exception as exc:  # the batch carries on; the type names the problem, the value stays out
        return FileOutcome(
            item.display_name, None, "rejected", "unexpected_error", type(exc).__name__, source_study_uid=source_study
        )


def _duplicate(display_name: str, source_study: str) -> FileOutcome:
    return FileOutcome(
        display_name,
        None,
        "rejected",
        "duplicate_instance",
        "the same SOP instance appeared twice in the input; the first copy was kept",
        source_study_uid=source_study,
    )


def commit_staged(outcome: FileOutcome, written: set[str]) -> FileOutcome:
    """Move a staged output into place, or drop it when its SOP instance was already written."""
    if not outcome.staged:
        return outcome
    staged, destination = Path(outcome.staged), Path(str(outcome.output))
    sop_uid = destination.stem
    if sop_uid in written:
        staged.unlink(missing_ok=True)
        return _duplicate(outcome.input, outcome.source_study_uid)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, destination)
    written.add(sop_uid)
    return replace(outcome, staged="")


def deidentify_staged(
    items: list[InputFile],
    stages: list[Path],
    out_dir: Path,
    deidentifier: DicomDeidentifier,
    limits: DicomLimits,
    workers: int = 1,
) -> Iterator[FileOutcome]:
    """``deidentify_one`` over ``items``, each written to its stage path, in ``workers`` processes.

    Outcomes come in input order; pass each to ``commit_staged``. Workers start from a forkserver
    (a clean process, not a fork of one that may hold torch's threads) and import only this package;
    the deidentifier (its table, its key) travels once per worker, not once per file.
    """
    if workers == 1 or len(items) < 2:
        for item, stage in zip(items, stages, strict=True):
            yield deidentify_one(item, out_dir, deidentifier, limits, set(), stage=stage)
        return
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(out_dir, deidentifier, limits)
    ) as executor:
        yield from executor.map(_deidentify_in_worker, items, stages, chunksize=16)


_WORKER: dict[str, object] = {}


def _start_worker(out_dir: Path, deidentifier: DicomDeidentifier, limits: DicomLimits) -> None:
    _WORKER.update(out_dir=out_dir, deidentifier=deidentifier, limits=limits)


def _deidentify_in_worker(item: InputFile, stage: Path) -> FileOutcome:
    return deidentify_one(
        item,
        _WORKER["out_dir"],  # type: ignore[arg-type]
        _WORKER["deidentifier"],  # type: ignore[arg-type]
        _WORKER["limits"],  # type: ignore[arg-type]
        set(),
        stage=stage,
    )


def deidentify_files(
    sources: Iterable[str | os.PathLike[str]],
    out_dir: Path,
    deidentifier: DicomDeidentifier,
    *,
    work_dir: Path,
    report_path: Path | None = None,
    limits: DicomLimits = DEFAULT_LIMITS,
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    on_progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """De-identify every DICOM file under ``sources`` into ``out_dir``.

    Args:
        sources: files, folders, zips or DICOMDIRs.
        out_dir: where de-identified files go (created).
        deidentifier: the configured profile and site secret.
        work_dir: scratch space for extracted archives.
        report_path: JSON-lines report, one line per input file, written as the batch goes.
        limits: per-file reading bounds.
        archive_limits: zip bounds.
        on_progress: called with (done, total) after each file.
    """
    rejected: list[Rejection] = []
    items = list(iter_input_files(sources, extract_dir=work_dir, archive_limits=archive_limits, rejected=rejected))
    summary, written = BatchSummary(), set()
    with contextlib.ExitStack() as stack:
        report: TextIO | None = None
        if report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report = stack.enter_context(open(report_path, "w", encoding="utf-8"))
        for rejection in rejected:
            _record(
                summary, report, FileOutcome(rejection.display_name, None, "rejected", rejection.code, rejection.reason)
            )
        for done, item in enumerate(items, start=1):
            _record(summary, report, deidentify_one(item, out_dir, deidentifier, limits, written))
            if on_progress is not None:
                on_progress(done, len(items))
    return summary


def _record(summary: BatchSummary, report: TextIO | None, outcome: FileOutcome) -> None:
    summary.add(outcome)
    if report is not None:
        report.write(outcome.report_line() + "\n")
        report.flush()
