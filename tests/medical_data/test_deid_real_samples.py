"""De-identification of the deid project's sample studies (deid-data): real headers, real vendors."""

from __future__ import annotations

import io
from pathlib import Path

import deid_data
import pytest

from medical_data.deid import DicomDeidentifier, deidentify_files
from medical_data.dicom_io import read_dicom

SAMPLES = Path(deid_data.__file__).parent / "data"
SECRET = b"deid-data-test-site-secret-00000"


def _identifiers(path: Path) -> set[bytes]:
    """Every person name part and patient/accession ID in the original header, nested ones too."""
    dataset = read_dicom(path)
    found: set[bytes] = set()
    for element in dataset.iterall():
        if element.VR == "PN" and element.value:
            found.update(part.encode() for part in str(element.value).replace("^", " ").split() if len(part) >= 4)
        if element.keyword in ("PatientID", "AccessionNumber", "OtherPatientIDs") and len(str(element.value)) >= 4:
            found.add(str(element.value).encode())
    return found


@pytest.mark.parametrize(
    "name", ["animals/cat.dcm", "humans/ctbrain1.dcm", "dicom-cookies/image1.dcm", "dicom-cookies/image5.dcm"]
)
def test_names_and_ids_of_real_samples_do_not_survive(name: str) -> None:
    path = SAMPLES / name
    secrets = _identifiers(path)
    assert secrets, "the sample should carry identifiers to remove"
    dataset = read_dicom(path)
    # the human and cookie samples are secondary captures without a BurnedInAnnotation flag, which
    # are quarantined by default; here the header is what is under test
    DicomDeidentifier(site_secret=SECRET, allow_burned_in=True).deidentify(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert [s for s in secrets if s in buffer.getvalue()] == []


def test_ultrasound_samples_are_quarantined_including_zipped_cines(tmp_path: Path) -> None:
    summary = deidentify_files(
        [SAMPLES / "ultrasounds"],
        tmp_path / "out",
        DicomDeidentifier(site_secret=SECRET),
        work_dir=tmp_path / "work",
        report_path=tmp_path / "report.jsonl",
    )
    assert summary.counts["quarantined"] == 5  # 3 files and the 2 cines inside the zips
    assert summary.counts["written"] == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))


def test_a_duplicated_real_instance_is_written_once(tmp_path: Path) -> None:
    """ctbrain1 and ctbrain2 carry the same SOP Instance UID: one output, the copy reported."""
    quarantined = deidentify_files(
        [SAMPLES / "humans"], tmp_path / "q", DicomDeidentifier(site_secret=SECRET), work_dir=tmp_path / "work"
    )
    assert quarantined.counts["quarantined"] == 2  # secondary captures without a BurnedInAnnotation flag
    allowed = DicomDeidentifier(site_secret=SECRET, allow_burned_in=True)
    summary = deidentify_files([SAMPLES / "humans"], tmp_path / "out", allowed, work_dir=tmp_path / "work")
    assert summary.counts == {"written": 1, "rejected": 1}
    assert summary.reasons == {"duplicate_instance": 1}
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1
