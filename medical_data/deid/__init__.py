"""De-identification: DICOM by the PS3.15 Annex E table, free text by header and pattern identifiers."""

from medical_data.deid.batch import BatchSummary, FileOutcome, deidentify_files
from medical_data.deid.dicom import BurnedInAnnotationError, DicomDeidentifier, burned_in_risk
from medical_data.deid.profile import ProfileOptions, basic_profile
from medical_data.deid.text import KnownIdentifiers, TextScrubber

__all__ = [
    "BatchSummary",
    "BurnedInAnnotationError",
    "DicomDeidentifier",
    "FileOutcome",
    "KnownIdentifiers",
    "ProfileOptions",
    "TextScrubber",
    "basic_profile",
    "burned_in_risk",
    "deidentify_files",
]
