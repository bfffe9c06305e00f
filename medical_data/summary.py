"""A readable account of a study from its headers: series, modality, sizes, spacing, window.

Patient identity (name, IDs, birth date) is never part of it; ``StudySummary.without_identifiers``
also drops the UIDs, the date and the descriptions (free text that often names the patient), for
screens and reports that do not need them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, read_dicom, typed_dicom_errors
from medical_data.discovery import ScanResult, SeriesRef, StudyRef
from medical_data.errors import MedicalDataError
from medical_data.pixels import CT_PRESETS, header_window
from medical_data.volume import multiframe_geometry, sort_slices


@dataclass(frozen=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str
    series_description: str
    instances: int
    rows: int
    columns: int
    frames: int
    spacing_mm: tuple[float, ...] | None
    """(between slices, rows, columns), or (rows, columns) for a single 2D image; None when unknown."""
    ordering: str
    window: str
    transfer_syntax: str
    problem: str = ""


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    study_description: str
    study_date: str
    series: list[SeriesSummary]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def without_identifiers(self, number: int) -> StudySummary:
        """The same account with UIDs replaced by their position (``3``, ``3.1``) and no date or description."""
        series = [
            replace(s, series_instance_uid=f"{number}.{index}", series_description="")
            for index, s in enumerate(self.series, start=1)
        ]
        return StudySummary(str(number), "", "", series)


def _window_text(header: object, modality: str) -> str:
    window = header_window(header)  # type: ignore[arg-type]
    if window is not None:
        return f"header {window.center:g}/{window.width:g}"
    if modality == "CT":
        default = CT_PRESETS["mediastinum"]
        return f"default mediastinum {default.center:g}/{default.width:g}"
    return "robust percentile 0.5-99.5 (from pixels)"


@typed_dicom_errors
def summarize_series(series: SeriesRef, limits: DicomLimits = DEFAULT_LIMITS) -> SeriesSummary:
    headers = [read_dicom(instance.path, limits=limits, stop_before_pixels=True) for instance in series.instances]
    first = headers[0]
    frames = int(first.get("NumberOfFrames", 1) or 1)
    problem, spacing, ordering = "", None, "single image"
    try:
        if frames > 1:
            _, geometry = multiframe_geometry(first)
            spacing, ordering = geometry.spacing, geometry.sorted_by
        elif len(headers) > 1:
            _, geometry = sort_slices(headers)
            spacing, ordering = geometry.spacing, geometry.sorted_by
            if not geometry.uniform_spacing:
                problem = "slice spacing is not uniform"
        else:
            _, geometry = sort_slices(headers)
            spacing = geometry.spacing[1:]  # one 2D image: in-plane spacing only
    except MedicalDataError as exc:
        problem = exc.reason
    transfer_syntax = first.file_meta.get("TransferSyntaxUID")
    return SeriesSummary(
        series_instance_uid=series.series_instance_uid,
        modality=series.modality,
        series_description=series.series_description,
        instances=len(headers),
        rows=int(first.get("Rows", 0) or 0),
        columns=int(first.get("Columns", 0) or 0),
        frames=frames,
        spacing_mm=tuple(round(v, 4) for v in spacing) if spacing else None,  # type: ignore[arg-type]
        ordering=ordering,
        window=_window_text(first, series.modality) if "Rows" in first else "no image",
        transfer_syntax=transfer_syntax.name if transfer_syntax is not None else "",
        problem=problem,
    )


def summarize(scan: ScanResult, limits: DicomLimits = DEFAULT_LIMITS) -> list[StudySummary]:
    studies = []
    for study in scan.studies.values():
        first_path = next(iter(study.series.values())).instances[0].path
        try:
            date = _study_date(first_path, limits)
        except MedicalDataError:
            date = ""
        studies.append(_study_summary(study, date, limits))
    return studies


@typed_dicom_errors
def _study_date(path: object, limits: DicomLimits) -> str:
    return str(read_dicom(path, limits=limits, stop_before_pixels=True).get("StudyDate", ""))  # type: ignore[arg-type]


def _study_summary(study: StudyRef, date: str, limits: DicomLimits) -> StudySummary:
    series = []
    for ref in study.series.values():
        try:
            series.append(summarize_series(ref, limits))
        except MedicalDataError as exc:
            series.append(
                SeriesSummary(
                    ref.series_instance_uid,
                    ref.modality,
                    ref.series_description,
                    len(ref.instances),
                    0,
                    0,
                    0,
                    None,
                    "",
                    "",
                    "",
                    problem=exc.reason,
                )
            )
    return StudySummary(study.study_instance_uid, study.study_description, date, series)
