"""DICOM made by the tests (no patient files in the repo) and the files that packages ship."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def make_ct_slice(
    *,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = AXIAL,
    instance_number: int = 1,
    pixels: np.ndarray | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] = (1.0, -1024.0),
) -> Dataset:
    """A small valid CT image object with the given geometry (stored values = HU + 1024)."""
    pixels = np.zeros((8, 8), dtype=np.uint16) if pixels is None else pixels.astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN-0001"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [0.7, 0.8]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.tobytes()
    return ds


def patient_series(name: str, patient_id: str, accession: str, slices: int = 2) -> list[Dataset]:
    """One patient's CT series of ``slices`` slices in a new study, named and numbered as given."""
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


@pytest.fixture
def write_dicom(tmp_path: Path) -> Callable[[Dataset, str], Path]:
    def write(dataset: Dataset, name: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(path, enforce_file_format=True)
        return path

    return write


def shipped_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not shipped by pydicom or pydicom-data"
    return Path(path)


def packaged_dicom_files() -> list[Path]:
    """Every DICOM file that pydicom, pydicom-data and deid-data ship (found without the network)."""
    import data_store
    import deid_data

    roots = [shipped_file("CT_small.dcm").parent, Path(data_store.__file__).parent, Path(deid_data.__file__).parent]
    return sorted({p for root in roots for p in root.rglob("*.dcm")})


class _Pipe(io.RawIOBase):
    """A read-only stream without seek or length, like an upload's body."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._inner.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def unseekable_stream(data: bytes) -> io.BufferedReader:
    """``data`` behind a stream that cannot seek or tell its length (a pipe, a network body)."""
    return io.BufferedReader(_Pipe(data))
