"""Stored studies: upload (de-identified when the settings say so), list, describe, render, delete.

Files are kept under the data folder as ``studies/FOLDER/SERIES_UID/SOP_UID.dcm``: FOLDER is a
generated name, and the UIDs are checked to be UIDs (digits and dots) before they name anything, so
neither a user's file name nor a crafted header ever becomes a path. Every access is recorded in the
audit trail in the same unit of work as the data it covers (fail closed).
"""

from __future__ import annotations

import io
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.models import Study, Turn
from app.services.auditing import Actor, record_access
from audit import Action, unit_of_work
from medical_data.dicom_io import DEFAULT_LIMITS, valid_uid
from medical_data.discovery import ArchiveLimits, Rejection, ScanResult, SeriesRef, scan

DICOM_MAGIC_OFFSET = 128
VOLUME_CACHE = 4
SCAN_CACHE = 64
INFLATION_BUDGET = 4
"""The zips of one upload may inflate to this many times the upload size limit, all together."""
DISK_RESERVE = 1024**3
"""Room left on the data folder's disk after the largest upload: the audit log must always be writable."""


class StudyNotFound(LookupError):
    """No stored study (or series, or slice) by that id."""


class UploadRejected(ValueError):
    """An upload that is refused as a whole: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class ImportResult:
    studies: list[Study] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def upload_kind(head: bytes) -> str | None:
    """ "dicom" (Part 10: ``DICM`` after the 128-byte preamble), "zip", or None, from the first bytes."""
    if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return None


class StudyStore:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self._volumes: OrderedDict[tuple[str, int, str, str], Any] = OrderedDict()
        self._scans: OrderedDict[tuple[str, int], ScanResult] = OrderedDict()
        self._lock = threading.Lock()

    # -- upload ----------------------------------------------------------------------------------
    def stage_upload(self, sources: list[BinaryIO]) -> Path:
        """Copy uploaded files into a new upload folder under names made from their position (a sender's
        file name is never used), each checked by content first; ``import_upload`` takes the folder.

        Raises:
            UploadRejected: more files than the limit (413), or one neither DICOM nor a zip (415);
                nothing is kept then.
        """
        if len(sources) > self.settings.max_upload_files:
            raise UploadRejected(413, f"{len(sources)} files, over the limit of {self.settings.max_upload_files}")
        folder = self.settings.data_dir / "uploads" / uuid.uuid4().hex
        target = folder / "files"
        target.mkdir(parents=True, mode=0o700)
        try:
            for index, source in enumerate(sources):
                kind = upload_kind(source.read(DICOM_MAGIC_OFFSET + 4))
                source.seek(0)
                if kind is None:
                    raise UploadRejected(415, f"file {index + 1} is neither DICOM (Part 10) nor a zip")
                with open(target / f"{index:06d}.{'zip' if kind == 'zip' else 'dcm'}", "wb") as out:
                    shutil.copyfileobj(source, out)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    def import_upload(self, upload_dir: Path, actor: Actor) -> ImportResult:
        """Index, de-identify (when configured) and store what ``upload_dir`` holds; the folder is removed.

        Raises:
            UploadRejected: more files than the limit (413), or nothing usable (422).
        """
        try:
            return self._import(upload_dir, actor)
        finally:
            shutil.rmtree(upload_dir, ignore_errors=True)

    def _import(self, upload_dir: Path, actor: Actor) -> ImportResult:
        # one budget for the whole upload, shared by its zips: members and inflated bytes
        zips = max(1, len(list((upload_dir / "files").glob("*.zip"))))
        budget = INFLATION_BUDGET * self.settings.max_upload_bytes
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < budget + DISK_RESERVE:
            raise UploadRejected(507, "the server's disk is too full to take this upload; tell the administrator")
        limits = ArchiveLimits(
            max_members=max(1, self.settings.max_upload_files // zips), max_total_bytes=max(1, budget // zips)
        )
        found = scan([upload_dir / "files"], extract_dir=upload_dir / "extracted", archive_limits=limits)
        result = ImportResult(rejected=[_anonymous(r, upload_dir) for r in found.rejected])
        count = sum(study.instance_count for study in found.studies.values())
        if count > self.settings.max_upload_files:
            raise UploadRejected(
                413, f"the upload holds {count} DICOM files, over the limit of {self.settings.max_upload_files}"
            )
        if self.settings.deid_on_upload and found.studies:
            found = self._deidentify(found, upload_dir / "deidentified", result)
        placed: list[tuple[Study, bool, Path]] = []
        for study_uid, study_ref in found.studies.items():
            if not valid_uid(study_uid):
                result.rejected.append(Rejection("study", "invalid_uid", "the Study Instance UID is not a UID"))
                continue
            placed.append(self._place(study_uid, study_ref, result, actor))
        if not placed:
            reasons = sorted({r.reason for r in result.rejected}) or ["no DICOM files"]
            raise UploadRejected(422, "nothing usable in the upload: " + "; ".join(reasons[:5]))
        try:
            stored: list[Study] = []
            with unit_of_work(self.engine) as session:
                for study, is_new, _ in placed:
                    if is_new:
                        session.add(study)
                    stored.append(study if is_new else session.merge(study))
                session.flush()
                for study in stored:
                    session.expunge(study)  # returned after the commit, with what was written
                record_access(
                    session,
                    actor,
                    action=Action.CREATE,
                    type_code="110107",
                    studies=[study.study_uid for study, _, _ in placed],
                    details={"deidentified": self.settings.deid_on_upload, "rejected": len(result.rejected)},
                )
        except BaseException:
            for _, is_new, folder in placed:
                if is_new:
                    shutil.rmtree(folder, ignore_errors=True)
            raise
        result.studies = stored
        return result

    def _deidentify(self, found: ScanResult, out_dir: Path, result: ImportResult) -> ScanResult:
        from app import __version__
        from medical_data.deid import DicomDeidentifier
        from medical_data.deid.batch import deidentify_one
        from medical_data.discovery import InputFile

        deidentifier = DicomDeidentifier(
            site_secret=self.settings.resolve_deid_secret(), method_label=f"omniclinic {__version__}"
        )
        written: set[str] = set()
        for study in found.studies.values():
            for series in study.series.values():
                for instance in series.instances:
                    outcome = deidentify_one(
                        InputFile(instance.path, "upload"), out_dir, deidentifier, DEFAULT_LIMITS, written
                    )
                    if outcome.status not in ("written", "duplicate"):
                        result.rejected.append(Rejection("file", outcome.code or outcome.status, outcome.reason))
        return scan([out_dir], extract_dir=out_dir / ".x") if out_dir.exists() else ScanResult()

    def _place(self, study_uid: str, study_ref: Any, result: ImportResult, actor: Actor) -> tuple[Study, bool, Path]:
        with Session(self.engine) as session:
            existing = session.get(Study, study_uid)
            if existing is not None:
                session.expunge(existing)
        study = existing or Study(
            study_uid=study_uid,
            folder=uuid.uuid4().hex,
            uploaded_by=actor.username,
            deidentified=self.settings.deid_on_upload,
        )
        folder = self.settings.studies_dir / study.folder
        for series_uid, series in study_ref.series.items():
            for instance in series.instances:
                if not (valid_uid(series_uid) and valid_uid(instance.sop_instance_uid)):
                    result.rejected.append(
                        Rejection("file", "invalid_uid", "a Series or SOP Instance UID is not a UID")
                    )
                    continue
                target = folder / series_uid / f"{instance.sop_instance_uid}.dcm"
                if target.exists():  # a stored instance is never replaced by an upload
                    result.rejected.append(Rejection("file", "duplicate", "that instance is stored already"))
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(instance.path, target)
        stored = self.scan_folder(folder)
        refs = stored.studies.get(study_uid)
        series_list = list(refs.series.values()) if refs else []
        study.modalities = ",".join(sorted({s.modality for s in series_list if s.modality}))[:64]
        study.description = (refs.study_description if refs else "")[:256]
        study.series_count = len(series_list)
        study.instance_count = sum(len(s.instances) for s in series_list)
        return study, existing is None, folder

    # -- reading ---------------------------------------------------------------------------------
    def scan_folder(self, folder: Path) -> ScanResult:
        return scan([folder], extract_dir=folder / ".unused") if folder.is_dir() else ScanResult()

    def list(self, actor: Actor) -> list[Study]:
        with unit_of_work(self.engine) as session:
            studies = list(session.scalars(select(Study).order_by(Study.uploaded.desc())))
            session.expunge_all()
            record_access(
                session, actor, action=Action.READ, type_code="110112", studies=[s.study_uid for s in studies]
            )
        return studies

    def get(self, study_uid: str) -> Study:
        with Session(self.engine) as session:
            study = session.get(Study, study_uid) if valid_uid(study_uid) else None
            if study is None:
                raise StudyNotFound("no stored study with that UID")
            session.expunge(study)
        return study

    def stored_scan(self, study: Study) -> ScanResult:
        """The study's stored files indexed (headers read once per study and instance count: a slider
        or a question does not read them again; a later upload to the study changes the count)."""
        key = (study.folder, study.instance_count)
        with self._lock:
            if key in self._scans:
                self._scans.move_to_end(key)
                return self._scans[key]
        found = self.scan_folder(self.settings.studies_dir / study.folder)
        with self._lock:
            self._scans[key] = found
            while len(self._scans) > SCAN_CACHE:
                self._scans.popitem(last=False)
        return found

    def series(self, study: Study) -> list[SeriesRef]:
        refs = self.stored_scan(study).studies.get(study.study_uid)
        return sorted(refs.series.values(), key=lambda s: -len(s.instances)) if refs else []

    def describe(self, study_uid: str, actor: Actor) -> dict[str, Any]:
        """Study and series metadata (from the headers; no patient identity), audited as a read."""
        from medical_data.summary import summarize

        study = self.get(study_uid)
        summaries = summarize(self.stored_scan(study))
        with unit_of_work(self.engine) as session:
            record_access(session, actor, action=Action.READ, type_code="110103", studies=[study_uid])
        summary = summaries[0].as_dict() if summaries else {"series": []}
        return {"study": study, "summary": summary}

    @staticmethod
    def load_volume(paths: list[Path], preset: str | None = None) -> Any:
        """One image object, or a series of single-frame slices, as a ``(C, D, H, W)`` MetaTensor in [0, 1]."""
        from medical_data.study import load_image, load_series

        return load_image(paths[0], preset=preset) if len(paths) == 1 else load_series(paths, preset=preset)

    def volume(self, study: Study, series_uid: str | None = None, preset: str | None = None) -> Any:
        """The series as a ``(C, D, H, W)`` MetaTensor in [0, 1] (cached: a slider moves through it)."""
        series_list = self.series(study)
        chosen = next((s for s in series_list if s.series_instance_uid == series_uid), None) if series_uid else None
        if chosen is None and series_uid:
            raise StudyNotFound("no series with that UID in the study")
        chosen = chosen or main_series(series_list)
        if chosen is None:
            raise StudyNotFound("the study holds no images")
        key = (study.study_uid, study.instance_count, chosen.series_instance_uid, preset or "")
        with self._lock:
            if key in self._volumes:
                self._volumes.move_to_end(key)
                return self._volumes[key]
        volume = self.load_volume([instance.path for instance in chosen.instances], preset)
        with self._lock:
            self._volumes[key] = volume
            while len(self._volumes) > VOLUME_CACHE:
                self._volumes.popitem(last=False)
        return volume

    def render_png(
        self, study_uid: str, actor: Actor, *, series_uid: str | None, index: int | None, preset: str | None
    ) -> tuple[bytes, int]:
        """(PNG of one slice, the series' slice count); the middle slice when ``index`` is None.

        Raises:
            StudyNotFound: no such study, series or slice.
            MedicalDataError: the pixels cannot be read (a typed reason).
            ValueError: an unknown window preset.
        """
        study = self.get(study_uid)
        volume = self.volume(study, series_uid, preset)
        depth = int(volume.shape[1])
        index = depth // 2 if index is None else index
        if not 0 <= index < depth:
            raise StudyNotFound(f"the series has slices 0 to {depth - 1}")
        png = slice_png(volume, index)
        with unit_of_work(self.engine) as session:
            record_access(session, actor, action=Action.READ, type_code="110103", studies=[study_uid])
        return png, depth

    # -- deleting --------------------------------------------------------------------------------
    def delete(self, study_uid: str, actor: Actor) -> None:
        from app.models import Conversation

        study = self.get(study_uid)
        with unit_of_work(self.engine) as session:
            turn_ids = list(
                session.scalars(
                    select(Turn.id)
                    .join(Conversation, Turn.conversation_id == Conversation.id)
                    .where(Conversation.study_uid == study_uid)
                )
            )
            session.delete(session.get(Study, study_uid))
            record_access(session, actor, action=Action.DELETE, type_code="110105", studies=[study_uid])
        shutil.rmtree(self.settings.studies_dir / study.folder, ignore_errors=True)
        from app.services.drafting import study_key

        for drafted in (self.settings.data_dir / "jobs").glob(f"*/{study_key(study_uid)}"):
            shutil.rmtree(drafted, ignore_errors=True)  # its drafts (FHIR, SR) carry its identity too
        for turn_id in turn_ids:
            (self.settings.answers_dir / f"{turn_id}.wav").unlink(missing_ok=True)
        with self._lock:  # a deleted study's pixels and headers are not kept in memory either
            for key in [k for k in self._volumes if k[0] == study_uid]:
                del self._volumes[key]
            for key in [k for k in self._scans if k[0] == study.folder]:
                del self._scans[key]


def main_series(series_list: list[SeriesRef]) -> SeriesRef | None:
    """The series with the most instances (an image series: SR and other documents have none to show)."""
    from medical_data.dicom_io import names_image_storage

    images = [s for s in series_list if any(names_image_storage(i.sop_class_uid) for i in s.instances)]
    return max(images or series_list, key=lambda s: len(s.instances), default=None)


def _anonymous(rejection: Rejection, upload_dir: Path) -> Rejection:
    """A rejection named by its position in the upload, never by a path on this server."""
    name = rejection.display_name.replace(str(upload_dir), "upload")
    return Rejection(name, rejection.code, rejection.reason)


def slice_png(volume: Any, index: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = volume.as_tensor()[:, index].numpy() if hasattr(volume, "as_tensor") else volume[:, index].numpy()
    image = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    picture = Image.fromarray(image[0]) if image.shape[0] == 1 else Image.fromarray(np.moveaxis(image, 0, -1))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
