from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, generate_uid

from medical_data.deid import (
    DicomDeidentifier,
    ProfileOptions,
    basic_profile,
    deidentify_files,
)
from medical_data.deid.profile import table_row_count
from medical_data.dicom_io import read_dicom

from .conftest import make_ct_slice, shipped_file

SECRET = b"site-secret-for-tests-0123456789"


def _deid(dataset: Dataset, **kwargs: object) -> Dataset:
    DicomDeidentifier(site_secret=SECRET, **kwargs).deidentify(dataset)  # type: ignore[arg-type]
    return dataset


def _saved_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _patient_slice(**kwargs: object) -> Dataset:
    ds = make_ct_slice(**kwargs)  # type: ignore[arg-type]
    ds.PatientName = "Doe^Jane^Quinn"
    ds.PatientID = "MRN-4477821"
    ds.PatientBirthDate = "19610407"
    ds.PatientAge = "063Y"
    ds.PatientSex = "F"
    ds.StudyDate = "20240315"
    ds.SeriesDate = "20240315"
    ds.AccessionNumber = "ACC99812"
    ds.InstitutionName = "Saint Example Hospital"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyDescription = "CT chest for Jane Doe, MRN-4477821"
    ds.ImageComments = "Patient Doe moved"
    return ds


def test_the_whole_table_is_loaded() -> None:
    profile = basic_profile()
    assert table_row_count() == 621
    # exact tags + curve rule + two overlay rules + the private-attributes row handled separately
    assert len(profile.exact) + 1 + len(profile.overlay_rules) + 1 == 621
    actions = {profile.action_for(tag, ProfileOptions()) for tag in profile.exact}
    assert actions <= {"X", "Z", "D", "U", "K", "C"}


def test_basic_profile_actions_on_a_real_header() -> None:
    ds = _deid(_patient_slice())
    assert "ImageComments" not in ds and "StudyDescription" not in ds  # X
    assert ds.InstitutionName == "ANONYMIZED"  # X/Z/D resolves to D, valid for any IOD
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""  # Z
    assert ds.AccessionNumber == ""  # Z
    assert ds.ReferringPhysicianName == ""  # Z
    assert ds.StudyDate == ""  # Z
    assert ds.SeriesDate == "19000101"  # X/D resolves to D: a dummy date
    assert "PatientAge" not in ds  # X without the patient-characteristics option
    assert ds.PatientName == ds.PatientID and str(ds.PatientID).startswith("P")
    assert ds.SOPClassUID == CTImageStorage  # a well-known UID is never remapped
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uids_are_remapped_consistently_and_keyed() -> None:
    study, series = generate_uid(), generate_uid()
    first = _patient_slice(study_uid=study, series_uid=series)
    second = _patient_slice(study_uid=study, series_uid=series)
    second.ReferencedImageSequence = Sequence([Dataset()])
    second.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
    second.ReferencedImageSequence[0].ReferencedSOPInstanceUID = first.SOPInstanceUID
    _deid(first)
    _deid(second)
    assert first.StudyInstanceUID == second.StudyInstanceUID != study
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != series
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID  # still linked
    assert str(first.StudyInstanceUID).startswith("2.25.") and len(str(first.StudyInstanceUID)) <= 64
    other_site = DicomDeidentifier(site_secret=b"another-site-secret-987654321")
    assert other_site.remap_uid(study) != DicomDeidentifier(site_secret=SECRET).remap_uid(study)


def test_nested_sequences_are_walked() -> None:
    """Identifiers inside sequences the profile keeps and walks (not ones it removes whole)."""
    ds = _patient_slice()
    item = Dataset()
    item.PatientName = "Doe^Jane"
    item.PatientID = "MRN-4477821"
    item.StudyInstanceUID = ds.StudyInstanceUID
    item.ReferencedSOPInstanceUID = generate_uid()
    deeper = Dataset()
    deeper.InstitutionName = "Saint Example Hospital"
    deeper.CodeMeaning = "Seen by Doe"
    item.AnatomicRegionSequence = Sequence([deeper])  # not in Table E.1-1: kept, walked by the safety net
    ds.ReferencedImageSequence = Sequence([item])  # U: kept with its UIDs remapped
    secrets = (b"Doe", b"4477821", b"Saint Example", str(item.StudyInstanceUID).encode())
    referenced = str(item.ReferencedSOPInstanceUID).encode()
    data = _saved_bytes(_deid(ds))
    assert len(ds.ReferencedImageSequence) == 1  # the items are there, walked
    assert len(ds.ReferencedImageSequence[0].AnatomicRegionSequence) == 1
    for secret in (*secrets, referenced):
        assert secret not in data


def test_private_tags_removed_unless_safe_listed() -> None:
    ds = _patient_slice()
    block = ds.private_block(0x0029, "ACME SAFE", create=True)
    block.add_new(0x10, "DS", "1.5")
    other = ds.private_block(0x0031, "ACME RISKY", create=True)
    other.add_new(0x10, "LO", "Doe^Jane")
    _deid(ds, options=ProfileOptions(safe_private=(("ACME SAFE", 0x0029, 0x10),)))
    assert ds.private_block(0x0029, "ACME SAFE")[0x10].value == "1.5"
    assert not any(element.tag.group == 0x0031 for element in ds)
    assert "113111" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    plain = _deid(_patient_slice())
    assert not any(element.tag.is_private for element in plain)


def test_retain_dates_shifts_per_patient_and_keeps_intervals() -> None:
    options = ProfileOptions(retain_dates=True)
    first, later = _patient_slice(), _patient_slice()
    later.StudyDate = "20240415"
    _deid(first, options=options)
    _deid(later, options=options)

    def as_date(value: str) -> date:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))

    assert first.StudyDate != "20240315"
    assert (as_date(later.StudyDate) - as_date(first.StudyDate)).days == 31  # the interval survives
    shift = (date(2024, 3, 15) - as_date(first.StudyDate)).days
    assert 1 <= shift <= 730
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    stranger = _patient_slice()
    stranger.PatientID = "MRN-0000001"
    _deid(stranger, options=options)
    assert stranger.PatientID != first.PatientID


def test_patient_characteristics_and_clean_descriptors() -> None:
    ds = _deid(_patient_slice(), options=ProfileOptions(retain_patient_characteristics=True, clean_descriptors=True))
    assert ds.PatientAge == "063Y" and ds.PatientSex == "F"
    assert ds.StudyDescription.startswith("CT chest for")
    assert "Jane" not in ds.StudyDescription and "Doe" not in ds.StudyDescription
    assert "4477821" not in ds.StudyDescription
    assert {"113100", "113108", "113105"} == {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}


def test_overlays_and_curves_are_removed() -> None:
    ds = _patient_slice()
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 32)
    ds.add_new(0x60004000, "LT", "Doe overlay note")
    ds.add_new(0x60000010, "US", 8)  # overlay rows: not in the table, kept
    _deid(ds)
    assert 0x60003000 not in ds and 0x60004000 not in ds and 0x60000010 in ds


def test_preamble_is_cleared() -> None:
    ds = _patient_slice()
    ds.preamble = b"TIFF Doe^Jane".ljust(128, b"\0")
    assert b"Doe^Jane" not in _saved_bytes(_deid(ds))


def test_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError):
        DicomDeidentifier(site_secret=b"short")


def test_batch_report_and_tree(tmp_path: Path, write_dicom) -> None:  # type: ignore[no-untyped-def]
    study, series = generate_uid(), generate_uid()
    for index in range(3):
        write_dicom(_patient_slice(study_uid=study, series_uid=series, instance_number=index), f"in/{index}.dcm")
    flagged = _patient_slice()
    flagged.RecognizableVisualFeatures = "YES"  # a face may show: quarantined whatever the pixel text
    write_dicom(flagged, "in/flagged.dcm")
    (tmp_path / "in" / "broken.dcm").write_bytes(shipped_file("CT_small.dcm").read_bytes()[:5000])
    report = tmp_path / "report.jsonl"
    summary = deidentify_files(
        [tmp_path / "in"],
        tmp_path / "out",
        DicomDeidentifier(site_secret=SECRET),
        work_dir=tmp_path / "work",
        report_path=report,
    )
    assert summary.counts == {"written": 3, "quarantined": 1, "rejected": 1}
    assert not summary.all_written
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == 5 and {line["status"] for line in lines} == {"written", "quarantined", "rejected"}
    text = report.read_text()
    for secret in ("Doe", "4477821", "Saint Example", "19610407", study, series):
        assert secret not in text
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == 3 and len({p.parent for p in outputs}) == 1
    assert all(part.startswith("2.25.") for p in outputs for part in p.relative_to(tmp_path / "out").parts)
    for path in outputs:
        data = path.read_bytes()
        assert b"Doe" not in data and b"4477821" not in data
        assert pydicom.dcmread(path).PatientIdentityRemoved == "YES"


def test_pixels_survive_de_identification() -> None:
    original = read_dicom(shipped_file("CT_small.dcm"))
    pixels = original.pixel_array.copy()
    reread = pydicom.dcmread(io.BytesIO(_saved_bytes(_deid(original))))
    np.testing.assert_array_equal(reread.pixel_array, pixels)


def test_implicit_vr_sequences_are_walked() -> None:
    """Implicit-VR files carry no VR on raw elements: nested sequences must still be found."""
    original = read_dicom(shipped_file("rtplan.dcm"))
    assert original.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    nested = [str(e.value) for e in original.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
    assert nested
    data = _saved_bytes(_deid(original))
    assert not any(uid.encode() in data for uid in nested)


def test_structure_check_descends_into_implicit_vr_sequences(tmp_path: Path) -> None:
    from medical_data.dicom_io import DicomLimits, check_structure

    dataset = pydicom.dcmread(shipped_file("rtplan.dcm"))
    assert check_structure(dataset) >= 2
    with pytest.raises(Exception, match="nested"):
        check_structure(pydicom.dcmread(shipped_file("rtplan.dcm")), DicomLimits(max_sequence_depth=1))


def test_unknown_public_tags_and_mistyped_attributes_are_removed_whatever_their_vr() -> None:
    ds = _patient_slice()
    ds.add_new(0x00089998, "CS", "SMITH JOHN")  # no dictionary knows (0008,9998)
    ds.add_new(0x00089999, "OB", b"SMITH JOHN MRN12345678")
    ds.add_new(0x00081110, "OB", b"Doe Jane as bytes")  # ReferencedStudySequence written as OB: never walked
    data = _saved_bytes(_deid(ds))
    assert b"SMITH" not in data and b"Doe Jane" not in data


def test_objects_without_their_uids_are_rejected_not_filed(tmp_path: Path, write_dicom) -> None:  # type: ignore[no-untyped-def]
    ds = _patient_slice()
    ds.SeriesInstanceUID = ""
    write_dicom(ds, "in/no-series.dcm")
    summary = deidentify_files(
        [tmp_path / "in"], tmp_path / "out", DicomDeidentifier(site_secret=SECRET), work_dir=tmp_path / "w"
    )
    assert summary.counts == {"rejected": 1} and summary.reasons == {"missing_attribute": 1}
    assert not (tmp_path / "out").exists()


def test_allow_listed_technical_text_loses_other_peoples_identity_too() -> None:
    """The technical allow-list keeps device text, not a relative's name, a phone or a birth date."""
    ds = _patient_slice()
    local, standard, nested = Dataset(), Dataset(), Dataset()
    local.CodeValue, local.CodingSchemeDesignator = "CTHEAD1", "99LOCAL"
    local.CodeMeaning = "CT head for Quentin Marlowe"  # a site's own meaning: its own words
    standard.CodeValue, standard.CodingSchemeDesignator, standard.CodeMeaning = "77477000", "SCT", "CT of head"
    nested.DeidentificationMethod = "Quentin Marlowe DOB 1980-02-03"
    nested.SequenceName = "Dr. Marlowe"  # a titled name
    ds.ProcedureCodeSequence = Sequence([local, standard])
    ds.ReferencedImageSequence = Sequence([nested])
    ds.Manufacturer = "ACME Imaging"
    data = _saved_bytes(_deid(ds))
    assert b"Marlowe" not in data and b"1980-02-03" not in data
    assert b"CT of head" in data and b"ACME Imaging" in data  # standard and device text stays


def test_retained_datetime_ranges_shift_both_ends_and_keep_offsets() -> None:
    ds = _patient_slice()
    nested = Dataset()
    nested.add_new(0x0040A120, "DT", "20190304120000-20190305")  # DateTime (content item): a range
    nested.add_new(0x0040A13A, "DT", "20190304120000-0500")  # ReferencedDateTime with a UTC offset
    ds.ReferencedImageSequence = Sequence([nested])
    data = _saved_bytes(_deid(ds, options=ProfileOptions(retain_dates=True)))
    assert b"20190305" not in data and b"20190304" not in data
    assert b"-0500" in data  # the offset is not a date
