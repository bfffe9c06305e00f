"""Batch report drafting: a worklist of studies in, a draft per study out as text, FHIR and DICOM SR.

One path for ``omniclinic draft-reports`` (a folder or a PACS) and the API's jobs (stored studies):

- a ``StudySource`` lists the worklist and fetches each study's files;
- ``shard`` gives each process its share, by a hash of the Study Instance UID: every rank of a
  ``torchrun`` launch (``RANK``/``WORLD_SIZE``) or of ``--workers N`` takes the same studies however the
  worklist is ordered, with no communication between them;
- ``Drafter`` drafts one study at a time: it reads the study (one audit event), asks the model,
  writes the report in each format into a staging folder, stores the SR back to the PACS when asked,
  records the report written (one audit event), then moves the folder into place with a ``done.json``
  marker. A re-run skips studies whose marker covers what is asked; a study that fails is listed
  with its reason and the job goes on.

Output folders and console lines name a study by a key (a digest of its UID) and its place in the
worklist, never by anything from its header; the UIDs are in the job's own ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.services.assistant import AnswerFailed, Assistant, Busy, Delta
from app.services.auditing import Actor, record_access
from audit import Action, AuditError, Outcome, sha256_hex, unit_of_work
from medical_data.discovery import InstanceRef, ScanResult, SeriesRef, StudyRef, scan
from medical_data.errors import MedicalDataError
from medical_data.report_formats import DRAFT_REQUEST
from omniclinic_common.files import write_atomically

logger = logging.getLogger("omniclinic.drafting")

FORMATS = ("text", "fhir", "sr")
FILE_NAMES = {"text": "report.txt", "fhir": "diagnostic-report.json", "sr": "report-sr.dcm"}
DONE_MARKER = "done.json"
SUMMARY_DIR = "summary"
MAX_INDICATION_CHARS = 2000
BUSY_RETRIES = 30
PROGRESS_INTERVAL_S = 2.0
INSTANCES_ACCESSED = "110103"
SECTION = re.compile(r"(?im)^\s*(indication|technique|findings|impression|conclusion)s?\s*:\s*")


class DraftingError(RuntimeError):
    """A job that cannot start (an empty worklist, a PACS that cannot be queried): one clear line."""


@dataclass(frozen=True)
class WorkItem:
    """A study on the worklist; ``position`` is its 1-based place in the whole (sorted) worklist."""

    study_instance_uid: str
    accession_number: str = ""
    position: int = 0

    @property
    def key(self) -> str:
        return study_key(self.study_instance_uid)


def study_key(study_instance_uid: str) -> str:
    """The study's output folder name: a digest of its UID (a UID on a console is an identifier)."""
    return hashlib.sha256(study_instance_uid.encode("utf-8")).hexdigest()[:16]


def shard(items: Sequence[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
    """Rank ``rank``'s share of ``items``: those whose key, as a number, is ``rank`` modulo ``world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return [item for item in items if int(item.key, 16) % world_size == rank]


@dataclass(frozen=True)
class DraftOptions:
    formats: tuple[str, ...] = FORMATS
    deid: bool = False
    """Scrub identifiers from the report text (indication, findings, impression) before it is written."""
    store: bool = False
    """Store each SR back to the PACS (STOW-RS)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ValueError(f"formats are some of {', '.join(FORMATS)}; got {', '.join(unknown) or 'none'}")
        if self.store and "sr" not in self.formats:
            raise ValueError("storing to the PACS needs the sr format")


@dataclass
class StudyOutcome:
    position: int
    key: str
    study_instance_uid: str
    status: str  # drafted, skipped (done before), failed
    reason: str = ""
    images: int = 0
    seconds: float = 0.0
    stored: bool = False


@dataclass
class ShardSummary:
    rank: int
    world_size: int
    total: int = 0
    outcomes: list[StudyOutcome] = field(default_factory=list)
    model: str = ""
    seconds: float = 0.0
    job: str = ""

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)


class StudySource(Protocol):
    def worklist(self) -> list[WorkItem]: ...

    def fetch(self, item: WorkItem, work_dir: Path) -> list[Path]:
        """The study's files (read into ``work_dir`` when they come from elsewhere)."""
        ...

    def indication(self, item: WorkItem) -> str: ...

    def notices(self) -> list[str]:
        """What the operator should know about the worklist (counts, no identifiers)."""
        ...


# -- sources ---------------------------------------------------------------------------------------
def _paired_notes(notes: Iterable[Any], studies: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """(indication text by study UID, notices for the operator: counts only, never a note's content)."""
    from medical_data.notes import StudyKey, pair_notes

    pairing = pair_notes(notes, [StudyKey(uid, accession) for uid, accession in studies])
    notices = []
    if pairing.unpaired:
        notices.append(f"{len(pairing.unpaired)} note(s) match no study on the worklist; not used")
    if pairing.ambiguous:
        notices.append(f"{len(pairing.ambiguous)} note(s) could belong to several studies; not used")
    return {uid: "\n".join(note.text for note in paired) for uid, paired in pairing.paired.items()}, notices


def read_note_files(paths: Iterable[Path]) -> list[Any]:
    """Every note in ``paths`` (files, or folders searched for note files); unreadable ones are skipped
    with a warning that names the file's position, not its content."""
    from medical_data.notes import NOTE_SUFFIXES, read_notes

    notes: list[Any] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in NOTE_SUFFIXES) if path.is_dir() else [path]
        for number, file in enumerate(files, start=1):
            try:
                notes.extend(read_notes(file, display_name=f"note file {number}"))
            except MedicalDataError as exc:
                logger.warning("note file %d skipped: %s", number, exc.reason)
    return notes


class FolderSource:
    """Studies in a folder (files, zips, DICOMDIRs; notes beside them give the indication)."""

    def __init__(self, folder: Path, *, work_dir: Path, notes: Sequence[Path] = ()) -> None:
        from medical_data.notes import NOTE_SUFFIXES

        if not folder.is_dir():
            raise DraftingError("the source is not a folder")
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() not in NOTE_SUFFIXES]
        self.scan: ScanResult = scan(files, extract_dir=work_dir / "extracted")
        self.rejected = self.scan.rejected
        notes_found = read_note_files([folder, *notes])
        self._indications, self._notices = _paired_notes(
            notes_found, ((uid, ref.accession_number) for uid, ref in self.scan.studies.items())
        )
        if self.rejected:
            self._notices.insert(0, f"{len(self.rejected)} file(s) in the folder are not readable DICOM; skipped")

    def notices(self) -> list[str]:
        return self._notices

    def worklist(self) -> list[WorkItem]:
        uids = sorted(self.scan.studies)
        return [
            WorkItem(uid, self.scan.studies[uid].accession_number, position) for position, uid in enumerate(uids, 1)
        ]

    def fetch(self, item: WorkItem, work_dir: Path) -> list[Path]:
        study = self.scan.studies[item.study_instance_uid]
        return [instance.path for series in study.series.values() for instance in series.instances]

    def indication(self, item: WorkItem) -> str:
        return self._indications.get(item.study_instance_uid, "")


class PacsSource:
    """Studies a DICOMweb query finds, fetched one at a time with WADO-RS."""

    def __init__(self, pacs: Any, query: Any, *, notes: Sequence[Path] = ()) -> None:
        self.pacs = pacs
        self.studies = pacs.find_studies(query)
        self._indications, self._notices = _paired_notes(
            read_note_files(notes), ((s.study_instance_uid, s.accession_number) for s in self.studies)
        )
        if pacs.invalid_uids:
            self._notices.insert(0, f"{pacs.invalid_uids} listed stud(ies) have an invalid UID; left out")
        found = {study.accession_number for study in self.studies}
        missing = [a for a in query.accession_numbers if a not in found]
        if missing:
            self._notices.insert(
                0, f"{len(missing)} of {len(query.accession_numbers)} accession numbers match no study"
            )

    def notices(self) -> list[str]:
        return self._notices

    def worklist(self) -> list[WorkItem]:
        return [
            WorkItem(study.study_instance_uid, study.accession_number, position)
            for position, study in enumerate(self.studies, 1)
        ]

    def fetch(self, item: WorkItem, work_dir: Path) -> list[Path]:
        return self.pacs.retrieve_study(item.study_instance_uid, work_dir)

    def indication(self, item: WorkItem) -> str:
        return self._indications.get(item.study_instance_uid, "")


# -- the report ------------------------------------------------------------------------------------
def split_sections(text: str) -> tuple[str, str]:
    """(findings, impression) from what the model wrote: its "Findings:" and "Impression:" sections
    when it wrote them; otherwise everything is findings and there is no impression."""
    parts = SECTION.split(text)
    sections: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        name = "impression" if name.lower() == "conclusion" else name.lower()
        sections[name] = (sections.get(name, "") + "\n" + body.strip()).strip()
    if "findings" not in sections and "impression" not in sections:
        return text.strip(), ""
    return sections.get("findings", ""), sections.get("impression", "")


def technique_text(study: StudyRef, header: Any) -> str:
    """What was done, from the headers: modalities, body part, description, series and images."""
    modalities = sorted({series.modality for series in study.series.values() if series.modality})
    images = study.instance_count
    parts = [", ".join(modalities) or "modality not stated"]
    body_part = str(header.get("BodyPartExamined", "") or "").strip()
    if body_part:
        parts.append(body_part.lower())
    if study.study_description:
        parts.append(study.study_description)
    if header.get("ContrastBolusAgent"):
        parts.append("with contrast")
    thickness = header.get("SliceThickness")
    if thickness:
        parts.append(f"{float(thickness):g} mm slices")
    plural = "" if len(study.series) == 1 else "s"
    return f"{'; '.join(parts)}. {len(study.series)} series{plural}, {images} image{'' if images == 1 else 's'}."


# -- drafting ----------------------------------------------------------------------------------------
class Drafter:
    """Drafts studies into ``out_dir`` (one folder per study) with one process's model."""

    def __init__(
        self,
        assistant: Assistant,
        out_dir: Path,
        options: DraftOptions,
        *,
        audit_engine: Engine,
        actor: Actor,
        job: str,
        pacs: Any = None,
        on_report: Callable[[WorkItem, str], None] | None = None,
    ) -> None:
        if options.store and pacs is None:
            raise ValueError("storing SRs needs a PACS")
        self.assistant, self.out_dir, self.options = assistant, out_dir, options
        self.audit_engine, self.actor, self.job, self.pacs = audit_engine, actor, job, pacs
        self.on_report = on_report
        self._scrubber: Any = None

    # -- the job ---------------------------------------------------------------------------------
    def run(
        self,
        source: StudySource,
        items: Sequence[WorkItem],
        *,
        rank: int = 0,
        world_size: int = 1,
        progress: Callable[[ShardSummary], None] | None = None,
    ) -> ShardSummary:
        """Draft ``items`` (this rank's share) one by one. The summary part and ``progress`` are updated
        at the start, every ``PROGRESS_INTERVAL_S`` at most, and at the end (not after every study: a
        10,000-study night would rewrite a growing file 10,000 times)."""
        started = time.monotonic()
        summary = ShardSummary(rank, world_size, total=len(items), model=self.assistant.info.name, job=self.job)
        write_summary_part(self.out_dir, summary)  # this run's part replaces any earlier run's at once
        work_root = self.out_dir / ".work" / f"rank-{rank}"
        reported = started
        for item in items:
            summary.outcomes.append(self.draft(source, item, work_root))
            if time.monotonic() - reported >= PROGRESS_INTERVAL_S and len(summary.outcomes) < len(items):
                summary.seconds = time.monotonic() - started
                write_summary_part(self.out_dir, summary)
                if progress is not None:
                    progress(summary)
                reported = time.monotonic()
        summary.seconds = time.monotonic() - started
        write_summary_part(self.out_dir, summary)
        if progress is not None:
            progress(summary)
        shutil.rmtree(work_root, ignore_errors=True)
        with suppress(OSError):  # the last rank out leaves no empty work folder behind
            (self.out_dir / ".work").rmdir()
        return summary

    def is_done(self, item: WorkItem) -> bool:
        marker = self.out_dir / item.key / DONE_MARKER
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            done.get("study_instance_uid") == item.study_instance_uid
            and set(self.options.formats) <= set(done.get("formats", ()))
            and (done.get("stored", False) or not self.options.store)
            and done.get("deid", False) == self.options.deid  # a --deid rerun rewrites identified drafts
            and done.get("model") == self.assistant.info.name  # a new model redrafts the old one's
        )

    def draft(self, source: StudySource, item: WorkItem, work_root: Path) -> StudyOutcome:
        """One study, start to finish. Failures of the study become its outcome; a failure of the audit
        trail is raised (the job stops: nothing is drafted that is not recorded)."""
        from medical_data.dicomweb import PacsError

        outcome = StudyOutcome(item.position, item.key, item.study_instance_uid, "failed")
        if self.is_done(item):
            outcome.status = "skipped"
            return outcome
        started = time.monotonic()
        work_dir = work_root / item.key
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True, mode=0o700)
        try:
            self._draft(source, item, work_dir, outcome)
            outcome.status = "drafted"
        except PacsError as exc:
            outcome.reason = exc.reason
        except MedicalDataError as exc:
            outcome.reason = f"the study cannot be read: {exc.reason}"
        except AnswerFailed as exc:
            outcome.reason = f"the model could not draft it: {exc}"
        except Busy:
            outcome.reason = "the model stayed busy; run the job again later"
        except StudyFailed as exc:
            outcome.reason = str(exc)
        except (AuditError, SQLAlchemyError):
            raise  # the audit trail refused: nothing more is drafted that it would not record
        except Exception as exc:  # one odd study (a header a writer refuses, a full disk) does not stop the job
            logger.error("study %d of the worklist failed (%s)", item.position, type(exc).__name__)
            outcome.reason = f"unexpected {type(exc).__name__} while drafting (nothing of it was kept)"
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
            outcome.seconds = round(time.monotonic() - started, 3)
        return outcome

    def _draft(self, source: StudySource, item: WorkItem, work_dir: Path, outcome: StudyOutcome) -> None:
        from medical_data.report_formats import ReportDraft

        try:  # from the first byte fetched, the study has been read: the event is recorded either way
            files = source.fetch(item, work_dir / "files")
            study, series, headers = self._read(item, files, work_dir)
            volume = self._load(series)
        except (AuditError, SQLAlchemyError):
            raise
        except Exception:
            self._audit_read(item, success=False)
            raise
        self._audit_read(item, success=True)
        outcome.images = study.instance_count
        first = series.instances[0].sop_instance_uid  # its header was read with the others
        header = next(h for h in headers if str(h.SOPInstanceUID) == first)
        written = self._ask(volume)
        findings, impression = split_sections(written)
        indication = source.indication(item)[:MAX_INDICATION_CHARS]
        technique = technique_text(study, header)
        if self.options.deid:
            indication, technique, findings, impression = self._scrub(
                headers, indication, technique, findings, impression
            )
        info = self.assistant.info
        draft = ReportDraft(
            study_instance_uid=item.study_instance_uid,
            indication=indication,
            technique=technique,
            findings=findings,
            impression=impression,
            model_name=info.name,
            caution=info.caution,
            accession_number="" if self.options.deid else study.accession_number,
            drafted=datetime.now(UTC),
        )
        staging = work_dir / "report"
        staged = self._write(draft, staging, headers, series, header)
        if self.options.store:
            self.pacs.store([staged["sr_dataset"]])
            outcome.stored = True
        if self.on_report is not None:  # before the marker: a draft the app could not take is redone
            self.on_report(item, staged["text"])
        self._audit_written(item, draft, written, volume, outcome.stored)
        self._publish(item, staging, draft, outcome.stored, staged["sr_uid"])

    def _read(self, item: WorkItem, files: list[Path], work_dir: Path) -> tuple[StudyRef, SeriesRef, list[Any]]:
        from app.services.studies import main_series
        from medical_data.dicom_io import names_image_storage, read_dicom

        found = scan(files, extract_dir=work_dir / "extracted")
        study = found.studies.get(item.study_instance_uid)
        if study is None:
            reason = found.rejected[0].reason if found.rejected else "none of its files belong to it"
            raise StudyFailed(f"the study cannot be read: {reason}")
        if found.rejected:
            raise StudyFailed(f"the study cannot be read: {len(found.rejected)} of its files are unreadable")
        # documents in the study (SR, KO, PR: an earlier draft stored back among them) are neither
        # technique nor evidence
        images = {
            uid: refs
            for uid, refs in study.series.items()
            if any(names_image_storage(instance.sop_class_uid) for instance in refs.instances)
        }
        if not images:
            raise StudyFailed("the study holds no images")
        study = StudyRef(study.study_instance_uid, study.study_description, study.accession_number, images)
        series = main_series(list(images.values()))
        headers = [
            read_dicom(instance.path, stop_before_pixels=True)
            for refs in images.values()
            for instance in refs.instances
        ]
        return study, series, headers

    @staticmethod
    def _load(series: SeriesRef) -> Any:
        from app.services.studies import StudyStore

        return StudyStore.load_volume([instance.path for instance in _ordered(series.instances)])

    def _ask(self, volume: Any) -> str:
        for _ in range(BUSY_RETRIES):
            try:
                pieces = self.assistant.stream_answer(volume, [], DRAFT_REQUEST, speak=False)
                return "".join(piece.text for piece in pieces if isinstance(piece, Delta)).strip()
            except Busy as busy:  # live questions come first: wait for the model, then try again
                time.sleep(min(busy.retry_after, 30))
        raise Busy(30)

    def _scrub(self, headers: Sequence[Any], *texts: str) -> tuple[str, ...]:
        from medical_data.deid.text import KnownIdentifiers, TextScrubber

        if self._scrubber is None:
            self._scrubber = TextScrubber()
        known, seen = KnownIdentifiers(), set()
        for header in headers:  # each series' first header: names may differ from series to series
            series_uid = str(header.get("SeriesInstanceUID", ""))
            if series_uid not in seen:
                seen.add(series_uid)
                known = known | KnownIdentifiers.from_dataset(header)
        return tuple(self._scrubber.scrub(text, known).text for text in texts)

    def _write(
        self, draft: Any, staging: Path, headers: Sequence[Any], series: SeriesRef, header: Any
    ) -> dict[str, Any]:
        from medical_data.dicom_io import write_atomically as write_dicom
        from medical_data.report_formats import as_fhir, as_sr, as_text

        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o700)
        text = as_text(draft)
        staged: dict[str, Any] = {"text": text, "sr_uid": ""}
        if "text" in self.options.formats:
            write_atomically(staging / FILE_NAMES["text"], text)
        if "fhir" in self.options.formats:
            patient_id = "" if self.options.deid else str(header.get("PatientID", "") or "")
            resource = as_fhir(draft, patient_id=patient_id)
            write_atomically(staging / FILE_NAMES["fhir"], json.dumps(resource, indent=2, ensure_ascii=False) + "\n")
        if "sr" in self.options.formats:
            middle = _ordered(series.instances)[len(series.instances) // 2]
            image = next((h for h in headers if str(h.SOPInstanceUID) == middle.sop_instance_uid), None)
            sr = as_sr(draft, headers, image)
            write_dicom(sr, staging / FILE_NAMES["sr"])
            staged.update(sr_dataset=sr, sr_uid=str(sr.SOPInstanceUID))
        return staged

    def _publish(self, item: WorkItem, staging: Path, draft: Any, stored: bool, sr_uid: str) -> None:
        """The study's folder replaced by the staged one, its marker last: a crash leaves the old
        folder or the new, never a mix, and no marker without every file."""
        done = {
            "study_instance_uid": item.study_instance_uid,
            "formats": list(self.options.formats),
            "files": [FILE_NAMES[f] for f in self.options.formats],
            "model": draft.model_name,
            "drafted": draft.drafted.isoformat(),
            "deid": self.options.deid,
            "stored": stored,
            "sr_sop_instance_uid": sr_uid,
            "job": self.job,
        }
        target = self.out_dir / item.key
        old = self.out_dir / ".work" / f"replaced-{item.key}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        write_atomically(target / DONE_MARKER, json.dumps(done, indent=2) + "\n")
        shutil.rmtree(old, ignore_errors=True)

    # -- audit -----------------------------------------------------------------------------------
    def _audit_read(self, item: WorkItem, *, success: bool) -> None:
        outcome = Outcome.SUCCESS if success else Outcome.MINOR_FAILURE
        self._audit(item, Action.READ, {"activity": "study read for report drafting", "job": self.job}, outcome)

    def _audit_written(self, item: WorkItem, draft: Any, written: str, volume: Any, stored: bool) -> None:
        from app.services.asking import image_sha256

        details = {
            "activity": "report drafted",
            "job": self.job,
            "formats": list(self.options.formats),
            "stored_to_pacs": stored,
            "deidentified": self.options.deid,
            "model_name": draft.model_name,
            "prompt_sha256": sha256_hex(DRAFT_REQUEST),
            "image_sha256": image_sha256(volume),
            "output_sha256": sha256_hex(written),
        }
        self._audit(item, Action.CREATE, details, Outcome.SUCCESS)

    def _audit(self, item: WorkItem, action: Action, details: dict[str, object], outcome: Outcome) -> None:
        with unit_of_work(self.audit_engine) as session:
            record_access(
                session,
                self.actor,
                action=action,
                type_code=INSTANCES_ACCESSED,
                studies=[item.study_instance_uid],
                outcome=outcome,
                details=details,
            )


class StudyFailed(Exception):
    """A study-level failure with a reason fit for the summary (no identifiers): sources raise it too."""


def _ordered(instances: Sequence[InstanceRef]) -> list[InstanceRef]:
    return sorted(instances, key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_instance_uid))


# -- summaries -------------------------------------------------------------------------------------
def summary_part_path(out_dir: Path, rank: int, world_size: int) -> Path:
    return out_dir / SUMMARY_DIR / f"part-{rank:05d}-of-{world_size:05d}.json"


def write_summary_part(out_dir: Path, summary: ShardSummary) -> None:
    data = {
        "rank": summary.rank,
        "world_size": summary.world_size,
        "total": summary.total,
        "model": summary.model,
        "job": summary.job,
        "seconds": round(summary.seconds, 3),
        "finished": len(summary.outcomes) == summary.total,
        "outcomes": [asdict(outcome) for outcome in summary.outcomes],
    }
    write_atomically(summary_part_path(out_dir, summary.rank, summary.world_size), json.dumps(data, indent=1) + "\n")


def read_summary_parts(out_dir: Path, world_size: int) -> list[dict[str, Any]]:
    parts = []
    for rank in range(world_size):
        with suppress(OSError, ValueError):
            parts.append(json.loads(summary_part_path(out_dir, rank, world_size).read_text(encoding="utf-8")))
    return parts


def merge_summaries(out_dir: Path, world_size: int, job: str) -> list[StudyOutcome] | None:
    """When every rank's part of ``job`` is finished: ``summary.json`` and ``summary.tsv`` for the whole
    job, and its outcomes in worklist order. None while some rank is still at work (or on another
    machine, or has not replaced an earlier run's part yet)."""
    parts = read_summary_parts(out_dir, world_size)
    if len(parts) < world_size or not all(part.get("finished") and part.get("job") == job for part in parts):
        return None
    outcomes = sorted(
        (StudyOutcome(**outcome) for part in parts for outcome in part["outcomes"]), key=lambda o: o.position
    )
    merged = {
        "job": job,
        "world_size": world_size,
        "model": parts[0].get("model", ""),
        "counts": {s: sum(o.status == s for o in outcomes) for s in ("drafted", "skipped", "failed")},
        "outcomes": [asdict(outcome) for outcome in outcomes],
    }
    write_atomically(out_dir / "summary.json", json.dumps(merged, indent=1) + "\n")
    columns = ("position", "key", "study_instance_uid", "status", "images", "seconds", "stored", "reason")
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(asdict(o)[c]).replace("\t", " ") for c in columns) for o in outcomes]
    write_atomically(out_dir / "summary.tsv", "\n".join(lines) + "\n")
    return outcomes


def launch_env() -> tuple[int, int, int]:
    """(rank, world size, processes on this machine) from a launcher's environment (torchrun's names)."""

    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else default

    world = max(1, number("WORLD_SIZE", 1))
    rank = number("RANK", 0)
    if rank >= world:
        raise DraftingError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world, max(1, number("LOCAL_WORLD_SIZE", 1))


def iter_outcome_rows(outcomes: Iterable[StudyOutcome]) -> Iterator[tuple[str, ...]]:
    for o in outcomes:
        yield (
            str(o.position),
            o.key,
            o.status,
            str(o.images or ""),
            f"{o.seconds:.1f}",
            "yes" if o.stored else "",
            o.reason,
        )
