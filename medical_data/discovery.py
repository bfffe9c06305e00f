"""Find the studies and series in any input: files, folder trees, zips and DICOMDIRs.

Headers only are read (``stop_before_pixels``); instances are grouped by Study and Series Instance
UID. Archive member names are never used as paths: members are extracted under generated names,
with limits against zip bombs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.fileset import FileSet

from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, read_dicom, typed_dicom_errors
from medical_data.errors import ArchiveMemberRejected, ArchiveRejected, MedicalDataError


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on zip input."""

    max_members: int = 100_000
    max_total_bytes: int = 32 * 1024**3
    max_ratio: float = 200.0
    """A member that inflates more than this many times is treated as a zip bomb."""


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class InputFile:
    """A file to read, and the name to show for it (``archive.zip!N`` for the N-th member of a zip)."""

    path: Path
    display_name: str
    origin: str = ""
    """What the file was taken from, stable across runs: for a zip member, the zip (path, size,
    modification time) and the member (index, CRC, size); empty for a plain file (its path is)."""

    def resume_key(self) -> str:
        """A key that names the same input in a later run and changes when the input does."""
        if self.origin:
            return self.origin
        stat = self.path.stat()
        return f"{self.display_name}|{stat.st_size}|{stat.st_mtime_ns}"


@dataclass(frozen=True)
class Rejection:
    """A file that could not be used, with a typed reason (no patient data)."""

    display_name: str
    code: str
    reason: str


@dataclass(frozen=True)
class InstanceRef:
    path: Path
    display_name: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None


@dataclass
class SeriesRef:
    series_instance_uid: str
    modality: str
    series_description: str
    instances: list[InstanceRef] = field(default_factory=list)


@dataclass
class StudyRef:
    study_instance_uid: str
    study_description: str
    accession_number: str
    series: dict[str, SeriesRef] = field(default_factory=dict)

    @property
    def instance_count(self) -> int:
        return sum(len(series.instances) for series in self.series.values())


@dataclass
class ScanResult:
    studies: dict[str, StudyRef] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)


def _extract_zip(
    archive: Path, destination: Path, limits: ArchiveLimits, rejected: list[Rejection] | None
) -> Iterator[InputFile]:
    """Extract each member under a generated name; an unusable member is rejected and the rest go on.

    Members are shown as ``archive.zip!N`` (their index): a member's name is whatever the sender
    typed, often the patient's name, and never reaches a report or a path.
    """
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveRejected(f"not a readable zip ({type(exc).__name__})") from None
    archive_stat = archive.stat()
    archive_key = f"{archive}|{archive_stat.st_size}|{archive_stat.st_mtime_ns}"
    with handle:
        members = [info for info in handle.infolist() if not info.is_dir()]
        if len(members) > limits.max_members:
            raise ArchiveRejected(f"zip holds {len(members)} files, over the limit of {limits.max_members}")
        total = sum(info.file_size for info in members)
        if total > limits.max_total_bytes:
            raise ArchiveRejected(f"zip inflates to {total} bytes, over the limit of {limits.max_total_bytes}")
        destination.mkdir(parents=True, exist_ok=True)
        for index, info in enumerate(members):
            display_name = f"{archive}!{index}"
            target = destination / f"{index:06d}.member"
            try:
                _extract_member(handle, info, target, limits)
            except ArchiveRejected as exc:
                _reject(rejected, display_name, exc)
                continue
            yield InputFile(target, display_name, f"{archive_key}!{index}:{info.CRC:08x}:{info.file_size}")


def _extract_member(handle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: ArchiveLimits) -> None:
    """Copy one member out, checking it as it inflates; nothing is left behind when it fails.

    Raises:
        ArchiveMemberRejected: encrypted, a zip bomb, an unknown compression method or corrupt data.
    """
    if info.flag_bits & 0x1:
        raise ArchiveMemberRejected("the zip member is encrypted")
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        raise ArchiveMemberRejected("a zip member inflates suspiciously far (zip bomb)")
    try:
        # ZipExtFile stops at the declared size and checks the CRC at the end: a member cannot
        # inflate past what the ratio check above allowed, and corrupt data fails here.
        with handle.open(info) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, length=1024 * 1024)
    except NotImplementedError:
        target.unlink(missing_ok=True)
        raise ArchiveMemberRejected(
            f"the zip member uses an unsupported compression method ({info.compress_type})"
        ) from None
    except Exception as exc:  # each decompressor has its own error types (zlib, bz2, LZMA): all mean corrupt
        target.unlink(missing_ok=True)
        raise ArchiveMemberRejected(f"the zip member is corrupt ({type(exc).__name__})") from None


def _dicomdir_members(dicomdir: Path) -> Iterator[InputFile]:
    root = dicomdir.parent.resolve()
    fileset = FileSet(read_dicom(dicomdir, stop_before_pixels=True, require_sop_instance=False))
    for instance in fileset:
        path = Path(instance.path).resolve()
        if not path.is_relative_to(root):  # a record that points outside the file-set is ignored
            continue
        yield InputFile(path, str(path))


def iter_input_files(
    sources: Iterable[str | os.PathLike[str]],
    *,
    extract_dir: Path,
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    rejected: list[Rejection] | None = None,
) -> Iterator[InputFile]:
    """Every candidate file in ``sources``, in a stable order.

    Folders are walked (sorted, symlinks not followed); DICOMDIR files inside folders are skipped
    because the walk finds the files they index; a DICOMDIR given directly yields its records; zips
    are extracted under ``extract_dir``. Unusable archives are appended to ``rejected``.
    """
    archive_numbers = itertools.count()
    for source in map(Path, sources):
        if source.is_dir():
            for folder, subfolders, names in os.walk(source):
                subfolders.sort()
                for name in sorted(names):
                    path = Path(folder) / name
                    if name.upper() == "DICOMDIR" or name.startswith(".") or path.is_symlink():
                        continue
                    yield from _expand_file(path, extract_dir / str(next(archive_numbers)), archive_limits, rejected)
        elif source.name.upper() == "DICOMDIR":
            try:
                yield from _dicomdir_members(source)
            except MedicalDataError as exc:
                _reject(rejected, str(source), exc)
        elif source.exists():
            yield from _expand_file(source, extract_dir / str(next(archive_numbers)), archive_limits, rejected)
        else:
            _reject(rejected, str(source), MedicalDataError("no such file or folder"))


def _expand_file(
    path: Path, extract_to: Path, limits: ArchiveLimits, rejected: list[Rejection] | None
) -> Iterator[InputFile]:
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        try:
            yield from _extract_zip(path, extract_to, limits, rejected)
        except ArchiveRejected as exc:
            _reject(rejected, str(path), exc)
    else:
        yield InputFile(path, str(path))


def _reject(rejected: list[Rejection] | None, name: str, error: MedicalDataError) -> None:
    if rejected is not None:
        rejected.append(Rejection(name, error.code, error.reason))


@typed_dicom_errors
def _index_instance(result: ScanResult, item: InputFile, limits: DicomLimits) -> None:
    dataset = read_dicom(item.path, limits=limits, stop_before_pixels=True)
    if "StudyInstanceUID" not in dataset or "SeriesInstanceUID" not in dataset:
        raise MedicalDataError("no Study or Series Instance UID")
    study_uid, series_uid = str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)
    study = result.studies.setdefault(
        study_uid,
        StudyRef(study_uid, str(dataset.get("StudyDescription", "")), str(dataset.get("AccessionNumber", ""))),
    )
    series = study.series.setdefault(
        series_uid,
        SeriesRef(series_uid, str(dataset.get("Modality", "")), str(dataset.get("SeriesDescription", ""))),
    )
    number = dataset.get("InstanceNumber")
    series.instances.append(
        InstanceRef(
            item.path,
            item.display_name,
            str(dataset.SOPInstanceUID),
            str(dataset.get("SOPClassUID", "")),
            int(number) if number not in (None, "") else None,
        )
    )


def scan(
    sources: Iterable[str | os.PathLike[str]],
    *,
    extract_dir: Path,
    limits: DicomLimits = DEFAULT_LIMITS,
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
) -> ScanResult:
    """Index the studies and series in ``sources`` by UID, reading headers only."""
    result = ScanResult()
    for item in iter_input_files(
        sources, extract_dir=extract_dir, archive_limits=archive_limits, rejected=result.rejected
    ):
        try:
            _index_instance(result, item, limits)
        except MedicalDataError as exc:
            _reject(result.rejected, item.display_name, exc)
    return result
