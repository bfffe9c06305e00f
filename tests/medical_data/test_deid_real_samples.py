"""De-identification of the deid project's sample studies (deid-data): real headers, real vendors."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

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
    # the header is what is under test here (pixel text has its own tests): no OCR
    DicomDeidentifier(site_secret=SECRET, redactor=None, allow_burned_in=["SC", "DX"]).deidentify(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert [s for s in secrets if s in buffer.getvalue()] == []


@pytest.mark.usefixtures("ocr")
def test_real_ultrasound_exports_are_written_with_their_pixel_text_masked(tmp_path: Path) -> None:
    """Three files and two zipped cines of real scanners, with the patient's name, MRN and clinic in the pixels."""
    summary = deidentify_files(
        [SAMPLES / "ultrasounds"],
        tmp_path / "out",
        DicomDeidentifier(site_secret=SECRET),
        work_dir=tmp_path / "work",
        report_path=tmp_path / "report.jsonl",
    )
    assert summary.counts == {"written": 5}
    lines = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    outputs = {Path(line["input"]).name: read_dicom(line["output"]) for line in lines}
    assert len(outputs) == 5 and all(written.BurnedInAnnotation == "NO" for written in outputs.values())
    for name in ("RGB_IMAGE.dcm", "GREYSCALE_IMAGE.dcm"):
        original = read_dicom(SAMPLES / "ultrasounds" / name)
        identity = _header_identity(original)
        legible = _pixel_words(original) & identity
        assert legible, f"{name}: the patient's name, MRN, clinic or study date should be legible before redaction"
        assert _pixel_words(outputs[name]) & identity == set(), f"{name}: identity still legible in the pixels"


def _header_identity(dataset: Any) -> set[str]:
    """Name parts, patient ID, institution words and the study date as scanners print it (M/D/YYYY)."""
    words = {part for part in re.split(r"[^A-Z0-9]+", str(dataset.PatientName).upper()) if len(part) >= 4}
    words |= {str(dataset.PatientID)}
    words |= {part for part in str(dataset.get("InstitutionName", "")).upper().split() if len(part) >= 5}
    day = str(dataset.StudyDate)
    year, month, date = day[:4], day[4:6], day[6:8]
    words |= {f"{month}/{date}/{year}", f"{int(month)}/{int(date)}/{year}"}
    return words


def _pixel_words(dataset: Any) -> set[str]:
    """Words a plain OCR of the first frame reads, split at punctuation but dates kept whole."""
    import numpy as np
    from PIL import Image

    from medical_data.deid.burned_in import _tesseract_words
    from medical_data.pixels import render

    gray = np.round(render(dataset).pixels[0].max(axis=-1) * 255).astype(np.uint8)
    image = Image.fromarray(255 - gray)
    buffer = io.BytesIO()
    image.resize((image.width * 2, image.height * 2)).save(buffer, format="PNG")
    words: set[str] = set()
    for word in _tesseract_words(buffer.getvalue()):
        text = word[5].upper()
        words.add(text.strip(",.'"))
        words.update(re.split(r"[^A-Z0-9/]+", text))
    return words


def test_a_duplicated_real_instance_is_written_once(tmp_path: Path) -> None:
    """ctbrain1 and ctbrain2 carry the same SOP Instance UID: one output, the copy reported."""
    deidentifier = DicomDeidentifier(site_secret=SECRET, redactor=None, allow_burned_in=["SC"])
    summary = deidentify_files([SAMPLES / "humans"], tmp_path / "out", deidentifier, work_dir=tmp_path / "work")
    assert summary.counts == {"written": 1, "rejected": 1}
    assert summary.reasons == {"duplicate_instance": 1}
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1
