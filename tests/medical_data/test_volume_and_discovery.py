from __future__ import annotations

import itertools
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medical_data.discovery import ArchiveLimits, scan
from medical_data.errors import SeriesGeometryError
from medical_data.study import load_image, load_series
from medical_data.volume import sort_slices

from .conftest import make_ct_slice, shipped_file

OBLIQUE = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)  # rows along x/y at 30 degrees, columns down -z


def _series(count: int, orientation=OBLIQUE, step: float = 2.0) -> list[Dataset]:
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    study, series = generate_uid(), generate_uid()
    slices = []
    for index in range(count):
        pixels = np.full((8, 8), 1024 + 10 * index, dtype=np.uint16)  # HU encodes the true slice index
        position = (np.array([10.0, -5.0, 3.0]) + normal * step * index).tolist()
        slices.append(
            make_ct_slice(
                position=position,
                orientation=orientation,
                instance_number=count - index,
                pixels=pixels,
                study_uid=study,
                series_uid=series,
            )
        )
    return slices


def test_slices_sort_along_the_normal_not_by_instance_number() -> None:
    slices = _series(6)
    shuffled = slices[:]
    random.Random(7).shuffle(shuffled)
    ordered, geometry = sort_slices(shuffled)
    assert [int(ds.pixel_array[0, 0]) for ds in ordered] == [1024 + 10 * i for i in range(6)]
    assert geometry.sorted_by == "position" and geometry.uniform_spacing
    assert geometry.spacing == pytest.approx((2.0, 0.7, 0.8))


def test_affine_maps_voxels_to_patient_millimetres() -> None:
    ordered, geometry = sort_slices(_series(4))
    for k, ds in enumerate(ordered):
        i, j = 3, 5
        expected = (
            np.array(ds.ImagePositionPatient)
            + np.array(ds.ImageOrientationPatient[3:]) * 0.7 * i
            + np.array(ds.ImageOrientationPatient[:3]) * 0.8 * j
        )
        np.testing.assert_allclose((geometry.affine @ [k, i, j, 1])[:3], expected, atol=1e-4)


def test_instance_number_fallback_without_positions() -> None:
    slices = _series(3)
    for ds in slices:
        del ds.ImagePositionPatient
    ordered, geometry = sort_slices(slices)
    assert geometry.sorted_by == "instance_number"
    assert [int(ds.InstanceNumber) for ds in ordered] == [1, 2, 3]


def test_mixed_orientations_and_duplicate_positions_are_refused() -> None:
    mixed = _series(3) + _series(1, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    with pytest.raises(SeriesGeometryError, match="orientation"):
        sort_slices(mixed)
    twice = _series(2)
    with pytest.raises(SeriesGeometryError, match="share one position"):
        sort_slices([twice[0], twice[0]])


def test_series_volume_shares_one_window(write_dicom: Callable[[Dataset, str], Path]) -> None:
    paths = [write_dicom(ds, f"s/{i}.dcm") for i, ds in enumerate(_series(5))]
    volume = load_series(paths[::-1], preset="abdomen")
    assert volume.shape == (1, 5, 8, 8)
    assert volume.meta["window"] == [("abdomen", 50, 400)]
    assert volume.meta["Modality"] == "CT" and volume.meta["sorted_by"] == "position"
    assert "PatientName" not in volume.meta and "PatientID" not in volume.meta
    assert torch_increasing(volume[0, :, 0, 0].tolist())


def torch_increasing(values: list[float]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def test_multiframe_loads_as_frames() -> None:
    image = load_image(shipped_file("emri_small.dcm"))
    assert image.shape == (1, 10, 64, 64)
    assert load_image(shipped_file("CT_small.dcm")).shape == (1, 1, 128, 128)


def test_scan_groups_by_uid_across_folders_and_zips(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    slices = _series(3)
    write_dicom(slices[0], "in/a/one.dcm")
    archive = tmp_path / "in" / "b.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index, ds in enumerate(slices[1:]):
            bundle.write(write_dicom(ds, f"staging/{index}.dcm"), f"../../escape{index}.dcm")  # a zip-slip name
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    result = scan([tmp_path / "in"], extract_dir=tmp_path / "extract")
    (study,) = result.studies.values()
    (series,) = study.series.values()
    assert len(series.instances) == 3
    assert not list(tmp_path.glob("escape*")) and not list((tmp_path.parent).glob("escape*"))
    assert [r.code for r in result.rejected] == ["not_dicom"]


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("zeros.dcm", b"\0" * 5_000_000)
    result = scan([archive], extract_dir=tmp_path / "x", archive_limits=ArchiveLimits(max_ratio=100))
    assert result.studies == {}
    assert result.rejected[0].code == "archive_member_rejected" and "zip bomb" in result.rejected[0].reason


def _patch_method(data: bytearray, name: bytes, method: int) -> None:
    """Set a member's compression method in its local header and its central directory entry."""
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        header_name_offset = 30 if signature == b"PK\x03\x04" else 46
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + header_name_offset : start + header_name_offset + len(name)] == name:
                data[start + offset : start + offset + 2] = method.to_bytes(2, "little")
            start += 4


def test_a_corrupt_zip_member_is_rejected_alone_and_named_by_its_index(
    tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]
) -> None:
    """Bad deflate data and an unknown compression method reject their member; the others are used."""
    slices = _series(3)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for index, ds in enumerate(slices):
            bundle.write(write_dicom(ds, f"staging/{index}.dcm"), f"Doe^Jane_{index}.dcm")
        infos = bundle.infolist()
    data = bytearray(archive.read_bytes())
    corrupt = infos[1]
    payload = corrupt.header_offset + 30 + len(corrupt.filename) + len(corrupt.extra)
    data[payload + 20 : payload + 220] = bytes(range(200))  # bad deflate data
    _patch_method(data, b"Doe^Jane_2.dcm", 99)  # a method no zip reader knows
    archive.write_bytes(bytes(data))
    result = scan([archive], extract_dir=tmp_path / "x")
    (study,) = result.studies.values()
    assert study.instance_count == 1
    assert sorted((r.display_name, r.code) for r in result.rejected) == [
        (f"{archive}!1", "archive_member_rejected"),
        (f"{archive}!2", "archive_member_rejected"),
    ]
    assert "compression method" in result.rejected[1].reason and "corrupt" in result.rejected[0].reason
    assert not any("Doe" in r.display_name or "Doe" in r.reason for r in result.rejected)
    assert [i.display_name for s in study.series.values() for i in s.instances] == [f"{archive}!0"]
    assert sorted(p.name for p in (tmp_path / "x").rglob("*.member")) == ["000000.member"]  # nothing half-written


def test_a_corrupt_lzma_member_is_rejected_alone(tmp_path: Path, write_dicom: Callable[[Dataset, str], Path]) -> None:
    slices = _series(2)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_LZMA) as bundle:
        for index, ds in enumerate(slices):
            bundle.write(write_dicom(ds, f"staging/{index}.dcm"), f"{index}.dcm")
        corrupt = bundle.infolist()[0]
    data = bytearray(archive.read_bytes())
    payload = corrupt.header_offset + 30 + len(corrupt.filename) + len(corrupt.extra)
    data[payload + 12 : payload + 200] = bytes(188)  # inside the LZMA stream
    archive.write_bytes(bytes(data))
    result = scan([archive], extract_dir=tmp_path / "x")
    assert [(r.display_name, r.code) for r in result.rejected] == [(f"{archive}!0", "archive_member_rejected")]
    assert sum(study.instance_count for study in result.studies.values()) == 1


def test_dicomdir_lists_its_records(tmp_path: Path) -> None:
    result = scan([shipped_file("DICOMDIR")], extract_dir=tmp_path)
    assert sum(study.instance_count for study in result.studies.values()) == 31
    assert result.rejected == []


def test_missing_source_is_reported_not_raised(tmp_path: Path) -> None:
    result = scan([tmp_path / "nope"], extract_dir=tmp_path / "x")
    assert result.rejected[0].reason == "no such file or folder"
