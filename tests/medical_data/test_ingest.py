"""``ingest_folder``: de-identified dataset, notes paired safely, a cache that matches its settings, resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medical_data.deid import DicomDeidentifier
from medical_data.ingest import ingest_folder

from .conftest import make_ct_slice

SECRET = b"ingest-test-site-secret-00000000"


def _ingest(source: Path, out: Path, tmp_path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    deidentifier = DicomDeidentifier(site_secret=SECRET, redactor=None)
    return ingest_folder(
        source, out, deidentifier, state_path=tmp_path / "state.jsonl", work_dir=tmp_path / "work", **kwargs
    )


def _patient_series(name: str, patient_id: str, accession: str, slices: int = 2) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    datasets = []
    for index in range(slices):
        ds = make_ct_slice(
            position=(0, 0, 2.0 * index),
            instance_number=index + 1,
            study_uid=study,
            series_uid=series,
            pixels=np.full((16, 16), 1000 + 50 * index),
        )
        ds.PatientName, ds.PatientID, ds.AccessionNumber = name, patient_id, accession
        datasets.append(ds)
    return datasets


def test_a_note_whose_accession_names_two_studies_is_rejected_not_paired_with_the_wrong_patient(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    """Two patients' studies share an accession number; the note is about the second patient.

    Paired with the first patient's study it would be scrubbed against the wrong header and keep
    its own patient's name.
    """
    for folder, (name, patient_id) in enumerate([("Rivera^Tomas", "H100"), ("Okafor^Ngozi", "H200")]):
        for index, ds in enumerate(_patient_series(name, patient_id, "ACC1")):
            write_dicom(ds, f"in/{folder}/{index}.dcm")
    (tmp_path / "in" / "notes.csv").write_text(
        'accession_number,text\nACC1,"Ngozi Okafor: no acute findings."\n', encoding="utf-8"
    )
    summary = _ingest(tmp_path / "in", tmp_path / "out", tmp_path)
    assert [(r.display_name, r.code) for r in summary.rejected] == [
        (str(tmp_path / "in" / "notes.csv") + " row 1", "ambiguous_accession")
    ]
    assert summary.notes_paired == 0
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "Okafor" not in written and "Ngozi" not in written
    assert all(
        json.loads(line)["report"] is None for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    )
