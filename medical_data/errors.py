"""Typed rejections. Messages name the problem and the file's role, never a value from the file.

Every reason has a stable machine-readable ``code`` so batch reports can count them.
"""

from __future__ import annotations


class MedicalDataError(Exception):
    """Base class: an input that cannot be used, with a reason that holds no patient data."""

    code = "invalid_input"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DicomRejected(MedicalDataError):
    """A file that is not usable DICOM (not DICOM, truncated, over a limit, undecodable)."""

    code = "dicom_rejected"


class NotDicomError(DicomRejected):
    code = "not_dicom"


class TruncatedDicomError(DicomRejected):
    code = "truncated"


class DicomLimitError(DicomRejected):
    """Over a size, length or nesting limit: refused before it can exhaust time or memory."""

    code = "limit_exceeded"


class MissingIdentityError(DicomRejected):
    """An object without a Study, Series or SOP Instance UID: it cannot be filed or linked."""

    code = "missing_attribute"


class MissingPixelDataError(DicomRejected):
    code = "missing_pixel_data"


class UndecodablePixelDataError(DicomRejected):
    code = "undecodable_pixel_data"


class SeriesGeometryError(MedicalDataError):
    """Slices that cannot form one volume (mixed orientation or size)."""

    code = "inconsistent_series"


class ArchiveRejected(MedicalDataError):
    """A zip that is unsafe or over a limit (zip bomb, too many members, encrypted)."""

    code = "archive_rejected"


class ArchiveMemberRejected(ArchiveRejected):
    """One member of a zip that cannot be used (corrupt, encrypted, unknown compression); the rest go on."""

    code = "archive_member_rejected"


class AudioRejected(MedicalDataError):
    code = "audio_rejected"


class AudioDecodeError(AudioRejected):
    code = "audio_undecodable"


class AudioLimitError(AudioRejected):
    code = "audio_limit_exceeded"


class NotesRejected(MedicalDataError):
    code = "notes_rejected"
