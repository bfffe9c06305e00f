"""A draft as text, FHIR DiagnosticReport and DICOM SR."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest

from medical_data.report_formats import ReportDraft, as_fhir, as_sr, as_text
from tests.medical_data.conftest import patient_series


def a_draft(study_uid: str, **changes: str) -> ReportDraft:
    draft = ReportDraft(study_uid, "Cough.", "CT chest.", "A 6 mm nodule.", "Nodule.", "model-x", "Check it.")
    return dataclasses.replace(draft, **changes)


def test_the_sr_is_the_same_for_the_same_draft_and_new_for_a_new_text() -> None:
    series = patient_series("Doe^Jane", "P1", "ACC1", 2)
    draft = a_draft(series[0].StudyInstanceUID)
    first, again = as_sr(draft, series, series[0]), as_sr(draft, series, series[0])
    assert first.SOPInstanceUID == again.SOPInstanceUID  # storing it again replaces, not duplicates
    changed = as_sr(a_draft(series[0].StudyInstanceUID, findings="No nodule."), series, series[0])
    assert changed.SOPInstanceUID != first.SOPInstanceUID
    assert first.SeriesInstanceUID != series[0].SeriesInstanceUID  # a series of its own, in the same study
    assert first.StudyInstanceUID == series[0].StudyInstanceUID


def test_evidence_from_another_study_is_refused() -> None:
    one, other = patient_series("A^B", "P1", "1", 1), patient_series("C^D", "P2", "2", 1)
    with pytest.raises(ValueError, match="another study"):
        as_sr(a_draft(one[0].StudyInstanceUID), [*one, *other], one[0])
    with pytest.raises(ValueError, match="evidence"):
        as_sr(a_draft(one[0].StudyInstanceUID), [], None)


def test_no_header_value_reaches_a_warning_or_a_log(caplog: pytest.LogCaptureFixture) -> None:
    series = patient_series("Singlename", "P1", "ACC1", 1)  # highdicom warns about one-component names, quoting them
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        as_sr(a_draft(series[0].StudyInstanceUID), series, series[0])
    assert not [w for w in caught if "Singlename" in str(w.message)]
    assert "Singlename" not in caplog.text


def test_the_text_and_the_fhir_report_say_draft_and_name_the_model() -> None:
    draft = a_draft("1.2.3.4", impression="")
    text = as_text(draft)
    assert text.splitlines()[0] == "PRELIMINARY DRAFT by model-x: not signed, not reviewed by a radiologist."
    assert "IMPRESSION:\nThe model wrote no impression." in text
    fhir = as_fhir(draft, patient_id="P-1")
    assert fhir["status"] == "preliminary" and fhir["subject"]["identifier"]["value"] == "P-1"
    assert "model-x" in fhir["note"][0]["text"]
    assert "subject" not in as_fhir(draft)


def test_text_in_any_script_survives_the_sr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pydicom

    series = patient_series("Müller^Jürgen", "P1", "ACC1", 1)
    draft = a_draft(series[0].StudyInstanceUID, indication="Schädel-CT: Kopfschmerz; 头痛", findings="Keine Blutung.")
    path = tmp_path / "sr.dcm"
    as_sr(draft, series, series[0]).save_as(path, enforce_file_format=True)
    texts: list[str] = []
    pydicom.dcmread(path).walk(
        lambda _, element: texts.append(element.value) if element.keyword == "TextValue" else None
    )
    assert "Schädel-CT: Kopfschmerz; 头痛" in texts and "Keine Blutung." in texts
    assert str(pydicom.dcmread(path).PatientName) == "Müller^Jürgen"
