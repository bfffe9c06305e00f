"""Every series is shown in the reading orientation from its header; left stays the patient's left."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Orientation
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medical_data.study import load_image, load_series

from .conftest import make_ct_slice

ROWS, COLUMNS, SPACING = 12, 16, (0.7, 0.8)


def _marked_slice(z: float) -> np.ndarray:
    """Stored values with a bright block in the first columns: the patient's right in a usual axial slice."""
    pixels = np.full((ROWS, COLUMNS), 1000, dtype=np.uint16)
    pixels[2:5, 0:3] = 2000
    pixels[8:10, 6:12] = 1500 + int(z)  # another feature, different per slice
    return pixels


def _series(
    write_dicom: Callable[[Dataset, str], Path], folder: str, *, reverse_rows: bool, reverse_columns: bool = False
) -> list[Path]:
    """An axial series; reversed, the same anatomy stored with a reversed row (and column) direction."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(3):
        z = 5.0 * index
        pixels = _marked_slice(z)
        row = [1.0, 0.0, 0.0]
        column = [0.0, 1.0, 0.0]
        x0, y0 = -10.0, -20.0
        if reverse_rows:  # the first stored column is now the patient's left: mirror the pixels too
            pixels = pixels[:, ::-1]
            row = [-1.0, 0.0, 0.0]
            x0 = x0 + SPACING[1] * (COLUMNS - 1)
        if reverse_columns:
            pixels = pixels[::-1]
            column = [0.0, -1.0, 0.0]
            y0 = y0 + SPACING[0] * (ROWS - 1)
        ds = make_ct_slice(
            position=(x0, y0, z),
            orientation=(*row, *column),
            instance_number=index + 1,
            study_uid=study,
            series_uid=series,
            pixels=np.ascontiguousarray(pixels),
        )
        ds.PixelSpacing = list(SPACING)
        paths.append(write_dicom(ds, f"{folder}/{index}.dcm"))
    return paths


@pytest.mark.parametrize("reverse_columns", [False, True])
def test_a_series_stored_with_reversed_directions_looks_like_the_usual_one(
    write_dicom: Callable[[Dataset, str], Path], reverse_columns: bool
) -> None:
    usual = load_series(_series(write_dicom, "usual", reverse_rows=False))
    reversed_ = load_series(_series(write_dicom, "reversed", reverse_rows=True, reverse_columns=reverse_columns))
    assert torch.equal(usual.as_tensor(), reversed_.as_tensor())
    assert torch.allclose(usual.affine, reversed_.affine)
    # the marker (patient's right) is on the image's left, as radiologists read axial slices
    assert float(reversed_[0, 0, 3, 1]) > float(reversed_[0, 0, 3, COLUMNS - 2])


def test_a_single_reversed_image_is_turned_as_well(write_dicom: Callable[[Dataset, str], Path]) -> None:
    usual = load_image(_series(write_dicom, "a", reverse_rows=False)[0])
    reversed_ = load_image(_series(write_dicom, "b", reverse_rows=True)[0])
    assert torch.equal(usual.as_tensor(), reversed_.as_tensor())


def test_affines_are_labelled_lps_so_monai_keeps_the_patients_right(
    write_dicom: Callable[[Dataset, str], Path],
) -> None:
    """MONAI reads an unlabelled affine as RAS; labelled LPS, its Orientation puts the right where it is."""
    volume = load_series(_series(write_dicom, "s", reverse_rows=True))
    assert volume.meta["space"] == "LPS"
    ras = Orientation(axcodes="RAS", labels=None)(volume)  # spatial axes: towards the right, anterior, superior
    right_to_left = ras[0].float().mean(dim=(1, 2))  # intensity along the R axis (index grows to the right)
    assert ras.shape[1:] == (COLUMNS, ROWS, 3)
    assert float(right_to_left[-1]) > float(right_to_left[0])  # the marker is at the patient's right end


def test_a_radiograph_with_patient_orientation_R_is_mirrored(write_dicom: Callable[[Dataset, str], Path]) -> None:
    """Projection images carry PatientOrientation (row, column letters) instead of an orientation vector."""
    images = []
    for name, letters, flip in (("pa", ["L", "F"], False), ("mirrored", ["R", "F"], True)):
        pixels = _marked_slice(0)[::-1]  # head at the bottom of the stored pixels, flipped back by F
        pixels = pixels[:, ::-1] if flip else pixels
        ds = make_ct_slice(pixels=np.ascontiguousarray(pixels))
        ds.Modality = "DX"
        del ds.ImageOrientationPatient, ds.ImagePositionPatient
        ds.PatientOrientation = letters
        images.append(load_image(write_dicom(ds, f"{name}.dcm")))
    assert torch.equal(images[0].as_tensor(), images[1].as_tensor())
