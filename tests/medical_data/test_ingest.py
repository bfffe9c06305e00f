"""``ingest_folder``: de-identified dataset, notes paired safely, a cache that matches its settings, resume."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from monai.data import MetaTensor
from pydicom.dataset import Dataset

from medical_data.deid import DicomDeidentifier
from medical_data.dicom_io import read_dicom
from medical_data.ingest import CacheSettings, cached_dataset, ingest_folder

from .conftest import patient_series

SECRET = b"ingest-test-site-secret-00000000"


def _ingest(source: Path, out: Path, tmp_path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    deidentifier = DicomDeidentifier(site_secret=SECRET, redactor=None)
    return ingest_folder(
        source, out, deidentifier, state_path=tmp_path / "state.jsonl", work_dir=tmp_path / "work", **kwargs
    )


def test_a_note_whose_accession_names_two_studies_is_rejected_not_paired_with_the_wrong_patient(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    """Two patients' studies share an accession number; the note is about the second patient.

    Paired with the first patient's study it would be scrubbed against the wrong header and keep
    its own patient's name.
    """
    for folder, (name, patient_id) in enumerate([("Rivera^Tomas", "H100"), ("Okafor^Ngozi", "H200")]):
        for index, ds in enumerate(patient_series(name, patient_id, "ACC1")):
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


def _hospital(tmp_path: Path, write_dicom: Callable[[Dataset, str], Path], slices: int = 6) -> Path:
    for index, ds in enumerate(patient_series("Rivera^Tomas", "H100", "ACC7", slices=slices)):
        ds.BodyPartExamined = "CHEST"
        write_dicom(ds, f"in/ct/{index}.dcm")
    return tmp_path / "in"


def test_cached_items_keep_their_header_facts_and_affine_on_a_cache_hit(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    out = tmp_path / "out"
    _ingest(_hospital(tmp_path, write_dicom), out, tmp_path)
    shutil.rmtree(out / "dicom")  # served from the cache alone from here on
    (item,) = list(cached_dataset(out))
    image = item["image"]
    assert isinstance(image, MetaTensor)
    assert image.meta["Modality"] == "CT" and image.meta["BodyPartExamined"] == "CHEST"
    assert image.meta["space"] == "LPS" and tuple(image.meta["spacing"]) == (2.0, 0.7, 0.8)
    assert image.meta["window"] and image.affine.shape == (4, 4) and float(image.affine[2, 0]) == 2.0


def test_other_cache_settings_never_return_old_tensors(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    out = tmp_path / "out"
    source = _hospital(tmp_path, write_dicom)
    _ingest(source, out, tmp_path, cache_settings=CacheSettings(max_frames=6))
    assert cached_dataset(out)[0]["image"].shape[1] == 6
    assert cached_dataset(out, CacheSettings(max_frames=2))[0]["image"].shape[1] == 2
    lung = cached_dataset(out, CacheSettings(max_frames=6, window="lung"))[0]["image"]
    assert lung.meta["window"][0][0] == "lung"
    _ingest(source, out, tmp_path, cache_settings=CacheSettings(max_frames=4))  # a rerun with other settings
    assert cached_dataset(out)[0]["image"].shape[1] == 4


def test_zip_inputs_resume_and_a_rerun_reports_what_it_skipped(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    source = _hospital(tmp_path, write_dicom, slices=3)
    (source / "broken.dcm").write_bytes(b"DICM but not really")
    archive_dir = tmp_path / "zipped"
    archive_dir.mkdir()
    with zipfile.ZipFile(archive_dir / "export.zip", "w") as bundle:
        for path in sorted(source.rglob("*.dcm")):
            bundle.write(path, path.name)
    first = _ingest(archive_dir, tmp_path / "out", tmp_path)
    assert (first.written, first.already_done) == (3, 0)
    again = _ingest(archive_dir, tmp_path / "out", tmp_path)  # extracted afresh: new files, same members
    assert (again.written, again.already_done) == (0, 4)
    assert [(r.display_name, r.code) for r in again.rejected] == [(f"{archive_dir / 'export.zip'}!0", "not_dicom")]


def test_two_workers_write_what_one_writes(tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]) -> None:
    source = _hospital(tmp_path, write_dicom, slices=5)
    copy = patient_series("Rivera^Tomas", "H100", "ACC7", slices=1)[0]
    copy.SOPInstanceUID = read_dicom(source / "ct" / "0.dcm").SOPInstanceUID  # a duplicate instance
    write_dicom(copy, "in/zz-duplicate.dcm")
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        summary = ingest_folder(
            source,
            out,
            DicomDeidentifier(site_secret=SECRET, redactor=None),
            state_path=tmp_path / f"state{workers}.jsonl",
            work_dir=tmp_path / f"work{workers}",
            cache=False,
            workers=workers,
        )
        assert summary.written == 5
        outputs[workers] = {p.relative_to(out): p.read_bytes() for p in (out / "dicom").rglob("*.dcm")}
    assert outputs[1] == outputs[2] and len(outputs[1]) == 5
    assert not list((tmp_path / "work2").rglob("*.dcm"))  # no staged file left behind
