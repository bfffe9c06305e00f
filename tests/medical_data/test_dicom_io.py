from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medical_data import dicom_io
from medical_data.dicom_io import DicomLimits, read_dicom, write_atomically
from medical_data.errors import (
    DicomLimitError,
    DicomRejected,
    MedicalDataError,
    NotDicomError,
    TruncatedDicomError,
)

from .conftest import make_ct_slice, packaged_dicom_files, shipped_file, unseekable_stream


def _bytes_of(name: str) -> bytes:
    return shipped_file(name).read_bytes()


def _write(tmp_path: Path, data: bytes, name: str = "x.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reads_a_valid_file_completely() -> None:
    dataset = read_dicom(shipped_file("CT_small.dcm"))
    assert dataset.Modality == "CT"
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jp2klossless.dcm", "JPEG-LL.dcm", "liver.dcm"])
@pytest.mark.parametrize("cut", ["half", "last_ten_bytes"])
def test_truncated_files_are_rejected_as_truncated(tmp_path: Path, name: str, cut: str) -> None:
    data = _bytes_of(name)
    data = data[: len(data) // 2] if cut == "half" else data[:-10]
    with pytest.raises(TruncatedDicomError):
        read_dicom(_write(tmp_path, data))


def test_absurd_element_length_is_rejected(tmp_path: Path) -> None:
    crafted = _bytes_of("CT_small.dcm") + struct.pack("<HH2sHI", 0x0011, 0x0010, b"UT", 0, 0xFFFFFFF0) + b"abc"
    with pytest.raises(TruncatedDicomError, match="declares 4294967280 bytes"):
        read_dicom(_write(tmp_path, crafted))


def test_deeply_nested_sequences_are_refused_quickly(tmp_path: Path) -> None:
    dataset = make_ct_slice()
    inner = Dataset()
    inner.CodeMeaning = "leaf"
    for _ in range(200):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    dataset.ContentSequence = inner.ContentSequence
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    started = time.monotonic()
    with pytest.raises(DicomLimitError, match="nested"):
        read_dicom(_write(tmp_path, buffer.getvalue()))
    assert time.monotonic() - started < 30  # a bound, not a benchmark: it must not hang


@pytest.mark.parametrize(
    ("data", "error"),
    [(b"", NotDicomError), (b"plain text, not an image\n" * 20, NotDicomError), (b"\0" * 132, NotDicomError)],
)
def test_non_dicom_is_not_dicom(tmp_path: Path, data: bytes, error: type[MedicalDataError]) -> None:
    with pytest.raises(error):
        read_dicom(_write(tmp_path, data))


def test_file_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    path = _write(tmp_path, _bytes_of("CT_small.dcm"))
    with pytest.raises(DicomLimitError, match="byte limit"):
        read_dicom(path, limits=DicomLimits(max_file_bytes=1000))


def test_pixel_size_limit(tmp_path: Path) -> None:
    with pytest.raises(DicomLimitError, match="pixel data would decode"):
        read_dicom(shipped_file("CT_small.dcm"), limits=DicomLimits(max_pixel_bytes=1000))


def test_file_without_meta_gets_its_transfer_syntax() -> None:
    dataset = read_dicom(shipped_file("OT-PAL-8-face.dcm"))
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian


def test_error_messages_hold_no_patient_values(tmp_path: Path) -> None:
    dataset = make_ct_slice()
    dataset.PatientName = "Confidential^Person"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(MedicalDataError) as caught:
        read_dicom(_write(tmp_path, buffer.getvalue()[:-100]))
    assert "Confidential" not in str(caught.value)


def test_every_packaged_file_reads_or_gets_a_typed_reason() -> None:
    files = packaged_dicom_files()
    assert len(files) > 140
    outcomes = {"read": 0, "rejected": 0}
    for path in files:
        try:
            read_dicom(path)
            outcomes["read"] += 1
        except DicomRejected as exc:
            assert exc.reason and exc.code
            outcomes["rejected"] += 1
    assert outcomes["read"] > 120


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = make_ct_slice()
    destination = tmp_path / "out" / "image.dcm"

    def explode(self: Dataset, *args: object, **kwargs: object) -> None:
        Path(args[0]).write_bytes(b"half a file")  # type: ignore[arg-type]
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_as", explode)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(dataset, destination)
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_write_produces_a_readable_file(tmp_path: Path) -> None:
    destination = tmp_path / "out" / "image.dcm"
    write_atomically(make_ct_slice(), destination)
    assert read_dicom(destination).Modality == "CT"
    assert [p.name for p in destination.parent.iterdir()] == ["image.dcm"]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        dicom_io.DicomLimits(max_sequence_depth=0)


def test_a_corrupt_transfer_syntax_is_rejected(tmp_path: Path) -> None:
    """Found by the fuzz test: one flipped byte in the file meta's Transfer Syntax UID."""
    data = _bytes_of("rtplan.dcm")
    index = data.index(b"1.2.840.10008.1.2\x00")
    corrupt = data[:index] + b"\x00" + data[index + 1 :]
    with pytest.raises(DicomRejected, match="unknown transfer syntax"):
        read_dicom(_write(tmp_path, corrupt))


def _deflated(tmp_path: Path, extra_bytes: int) -> Path:
    """A CT slice in Deflated Explicit VR Little Endian carrying ``extra_bytes`` of zeros (they deflate ~1000x)."""
    dataset = make_ct_slice(study_uid="1.2.826.0.1.3680043.8.498.1", series_uid="1.2.826.0.1.3680043.8.498.2")
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    dataset.add_new(0x00110010, "LO", "BOMB")
    dataset.add_new(0x00111010, "OB", b"\0" * extra_bytes)
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    path = _deflated(tmp_path, 8 * 1024 * 1024)
    assert path.stat().st_size < 64 * 1024  # a few kilobytes on disk
    limits = DicomLimits(max_inflated_bytes=1024 * 1024)
    with pytest.raises(DicomLimitError, match="inflates past"):
        read_dicom(path, limits=limits)
    with pytest.raises(DicomLimitError, match="inflates past"):
        read_dicom(io.BytesIO(path.read_bytes()), limits=limits)
    assert read_dicom(path).Modality == "CT"  # within the default bound it reads


def test_corrupt_or_cut_deflated_data_is_a_typed_rejection(tmp_path: Path) -> None:
    data = _deflated(tmp_path, 1000).read_bytes()  # the same bytes every run (fixed UIDs)
    with pytest.raises(TruncatedDicomError, match="deflated dataset ends early"):
        read_dicom(_write(tmp_path, data[:-40]))
    corrupt = bytearray(data)
    corrupt[-60:-20] = b"\xff" * 40  # raw deflate has no checksum: this may inflate to garbage, never a crash
    with pytest.raises(DicomRejected):
        read_dicom(_write(tmp_path, bytes(corrupt)))


@pytest.mark.parametrize("wrap", [io.BytesIO, unseekable_stream])
def test_streams_have_the_same_limits_as_paths(wrap) -> None:  # type: ignore[no-untyped-def]
    data = _bytes_of("CT_small.dcm")
    assert read_dicom(wrap(data)).Modality == "CT"
    with pytest.raises(DicomLimitError, match="over 1000 bytes"):
        read_dicom(wrap(data), limits=DicomLimits(max_file_bytes=1000))
    with pytest.raises(NotDicomError, match="empty"):
        read_dicom(wrap(b""))
