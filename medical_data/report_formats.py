"""A drafted radiology report and the three forms it is written back in: text, FHIR, DICOM SR.

- ``ReportDraft``: indication, technique, findings, impression, and the model that wrote it.
- ``as_text``: the plain report, headed by the words that say it is a draft and by whom.
- ``as_fhir``: a FHIR R5 ``DiagnosticReport`` (fhir.resources), status ``preliminary``, that points at
  the ImagingStudy by its Study Instance UID and carries the text as its presented form.
- ``as_sr``: a DICOM Comprehensive SR (highdicom) after TID 2000 (Basic Diagnostic Imaging Report):
  the model as its device observer, the sections as containers, the findings inferred from an image of
  the source series, every source instance in its evidence, and the Preliminary Flag set.

The SR's UIDs are derived from the study, the model and the text: drafting the same study again with
the same model writes the same SR, so a re-run that stores it again replaces it instead of adding a copy.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset

from medical_data.dicom_io import quiet_pydicom

DRAFT_REQUEST = (
    "Write a radiology report for this study with the sections Findings and Impression, "
    "each headed by its name and a colon."
)
"""What the model is asked for a draft; the training corpus answers it with reference reports in that form."""
DRAFT_TITLE = "Draft radiology report"
FHIR_STATUS = "preliminary"
LOINC = "http://loinc.org"
DIAGNOSTIC_IMAGING_REPORT = "18748-4"
DICOM_UID_SYSTEM = "urn:dicom:uid"
SR_SERIES_NUMBER = 9901
SR_MAX_TEXT = 1024 * 64
"""UT values may be longer, but a section of a draft over 64 KiB is a runaway generation: cut it."""


@dataclass(frozen=True)
class ReportDraft:
    """One study's draft. Text fields are what will be written; ``caution`` says how far to trust it."""

    study_instance_uid: str
    indication: str
    technique: str
    findings: str
    impression: str
    model_name: str
    caution: str
    accession_number: str = ""
    drafted: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def heading(self) -> str:
        return f"PRELIMINARY DRAFT by {self.model_name}: not signed, not reviewed by a radiologist."

    def sections(self) -> list[tuple[str, str]]:
        return [
            ("Indication", self.indication or "Not given."),
            ("Technique", self.technique or "Not stated in the headers."),
            ("Findings", self.findings or "The model wrote no findings."),
            ("Impression", self.impression or "The model wrote no impression."),
        ]


def as_text(draft: ReportDraft) -> str:
    body = "\n\n".join(f"{name.upper()}:\n{text}" for name, text in draft.sections())
    return f"{draft.heading}\n{draft.caution}\n\n{body}\n"


def as_fhir(draft: ReportDraft, *, patient_id: str = "") -> dict[str, Any]:
    """The draft as a FHIR R5 DiagnosticReport (validated by fhir.resources), as JSON-ready data.

    ``patient_id``: the subject's identifier, when the report may carry it (never with de-identification).
    """
    from fhir.resources.diagnosticreport import DiagnosticReport

    text = as_text(draft)
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": FHIR_STATUS,
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": DIAGNOSTIC_IMAGING_REPORT, "display": "Diagnostic imaging study"}]
        },
        "issued": draft.drafted.isoformat(),
        "study": [
            {
                "type": "ImagingStudy",
                "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{draft.study_instance_uid}"},
            }
        ],
        "note": [{"text": f"{draft.heading} {draft.caution}"}],
        "conclusion": draft.impression or "The model wrote no impression.",
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "en",
                "title": DRAFT_TITLE,
                "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
            }
        ],
    }
    if draft.accession_number:
        resource["identifier"] = [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": draft.accession_number,
            }
        ]
    if patient_id:
        resource["subject"] = {"type": "Patient", "identifier": {"value": patient_id}}
    report = DiagnosticReport.model_validate(resource)
    if report.status != FHIR_STATUS:  # fhir.resources checks structure, not coded values
        raise ValueError("a draft's DiagnosticReport must be preliminary")
    return report.model_dump(mode="json", exclude_none=True)


def derived_uid(*parts: str) -> str:
    """A UID under pydicom's root that the same parts always give (and different parts practically never)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[*parts]))


def as_sr(draft: ReportDraft, evidence: Sequence[Dataset], image: Dataset | None) -> Dataset:
    """The draft as a Comprehensive SR in the source study.

    Args:
        draft: the report.
        evidence: the source instances' headers (pixels not needed); the SR copies the patient and
            study from the first and lists them all as evidence.
        image: the header of the image the findings are drawn from (the main series' middle image).

    Raises:
        ValueError: the evidence is empty or belongs to another study.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not evidence:
        raise ValueError("an SR needs the source study's instances as evidence")
    if any(str(ds.StudyInstanceUID) != draft.study_instance_uid for ds in evidence):
        raise ValueError("the evidence belongs to another study")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("omniclinic-model", draft.model_name), name=draft.model_name[:64]
        ),
    )
    finding = hd.sr.TextContentItem(
        name=codes.DCM.Finding,
        value=_sr_text(draft.findings or "The model wrote no findings."),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    if image is not None:
        finding.ContentSequence = [
            hd.sr.ImageContentItem(
                name=codes.DCM.SourceOfMeasurement,
                referenced_sop_class_uid=image.SOPClassUID,
                referenced_sop_instance_uid=image.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
            )
        ]
    sections = [
        _section(codes.DCM.History, codes.DCM.IndicationsForProcedure, draft.indication or "Not given."),
        _section(codes.DCM.CurrentProcedureDescriptions, codes.DCM.ProcedureDescription, draft.technique),
        _container(codes.DCM.Findings, [finding]),
        _section(codes.DCM.Impressions, codes.DCM.Impression, draft.impression or "The model wrote no impression."),
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=_sr_text(f"{draft.heading} {draft.caution}"),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
    ]
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = [*device, *sections]
    # highdicom warns (and logs) about odd header values by quoting them, a patient's name among them:
    # never let a header value reach a log
    with quiet_pydicom(), _quiet_highdicom():
        sr = _comprehensive_sr(draft, evidence, root)
    sr.PreliminaryFlag = "PRELIMINARY"
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the draft's text and the copied names, whatever their script
    return sr


@contextmanager
def _quiet_highdicom() -> Iterator[None]:
    highdicom_logger = logging.getLogger("highdicom")
    level = highdicom_logger.level
    highdicom_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        highdicom_logger.setLevel(level)


def _comprehensive_sr(draft: ReportDraft, evidence: Sequence[Dataset], root: Any) -> Dataset:
    import highdicom as hd

    digest = hashlib.sha256(as_text(draft).encode("utf-8")).hexdigest()
    seed = (draft.study_instance_uid, draft.model_name, digest)
    return hd.sr.ComprehensiveSR(
        evidence=[_with_type2_attributes(evidence[0]), *evidence[1:]],
        content=root,
        series_instance_uid=derived_uid("omniclinic-draft-series", *seed),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("omniclinic-draft", *seed),
        instance_number=1,
        manufacturer="omniclinic",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=DRAFT_TITLE[:64],
    )


TYPE2_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2_attributes(dataset: Dataset) -> Dataset:
    """A copy of the header with the patient and study attributes an SR must carry (Type 2: present,
    possibly empty) present; sources often leave them out, and de-identified ones always do."""
    import copy

    header = copy.copy(dataset)
    for keyword in TYPE2_STUDY_ATTRIBUTES:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _sr_text(text: str) -> str:
    return text[:SR_MAX_TEXT] or "-"


def _container(name: Any, items: list[Any]) -> Any:
    import highdicom as hd

    container = hd.sr.ContainerContentItem(name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = items
    return container


def _section(section: Any, item: Any, text: str) -> Any:
    import highdicom as hd

    return _container(
        section,
        [
            hd.sr.TextContentItem(
                name=item, value=_sr_text(text), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        ],
    )
