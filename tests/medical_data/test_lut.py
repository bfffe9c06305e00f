"""The lookup-table rendering gives exactly what the step-by-step DICOM chain gives."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from medical_data.dicom_io import read_dicom
from medical_data.lut import codes_from_array, histogram_window, native_codes
from medical_data.pixels import apply_window, decode_frames, modality_values, percentile_window, render
from medical_data.windows import Window

from .conftest import make_ct_slice, shipped_file


def reference(dataset: Dataset, window: Window) -> np.ndarray:
    """pydicom's decoder, then the modality LUT, then the window, then MONOCHROME1 inversion: no tables."""
    frames, photometric = decode_frames(dataset)
    out = apply_window(modality_values(frames, dataset), window)
    return 1.0 - out if photometric == "MONOCHROME1" else out


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "emri_small.dcm",
        "MR_small_jp2klossless.dcm",
        "JPEG-LL.dcm",
        "emri_small_big_endian.dcm",
        "liver.dcm",
        "MR2_UNCR.dcm",
        "RG1_UNCR.dcm",
        "rtdose.dcm",
    ],
)
def test_tables_match_the_reference_chain_on_shipped_files(name: str) -> None:
    dataset = read_dicom(shipped_file(name))
    window = Window(300, 900)
    np.testing.assert_allclose(render(dataset, window=window).pixels[..., 0], reference(dataset, window), atol=1e-6)


@pytest.mark.parametrize(
    ("signed", "bits_stored", "photometric"),
    [(False, 12, "MONOCHROME2"), (True, 12, "MONOCHROME2"), (True, 16, "MONOCHROME1"), (False, 10, "MONOCHROME1")],
)
def test_native_view_masks_unused_bits_and_signs_like_pydicom(signed: bool, bits_stored: int, photometric: str) -> None:
    rng = np.random.default_rng(bits_stored)
    raw = rng.integers(0, 65536, (16, 16), dtype=np.uint16)  # garbage in the unused high bits too
    dataset = make_ct_slice(pixels=raw, photometric=photometric, rescale=(2.0, -1000.0))
    dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    assert native_codes(dataset) is not None  # the fast path is taken
    window = Window(-200, 3000)
    np.testing.assert_allclose(render(dataset, window=window).pixels[..., 0], reference(dataset, window), atol=1e-6)


def test_per_frame_rescale_uses_one_table_per_frame() -> None:
    dataset = read_dicom(shipped_file("emri_small.dcm"))
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, 0
    from pydicom.sequence import Sequence

    items = []
    for index in range(int(dataset.NumberOfFrames)):
        transformation = Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept = 1 + index, -10 * index
        item = Dataset()
        item.PixelValueTransformationSequence = Sequence([transformation])
        items.append(item)
    dataset.PerFrameFunctionalGroupsSequence = Sequence(items)
    window = Window(500, 2000)
    np.testing.assert_allclose(render(dataset, window=window).pixels[..., 0], reference(dataset, window), atol=1e-6)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "emri_small.dcm"])
def test_histogram_window_matches_numpy_percentiles(name: str) -> None:
    dataset = read_dicom(shipped_file(name))
    frames, _ = decode_frames(dataset)
    slope, intercept = float(dataset.get("RescaleSlope", 1)), float(dataset.get("RescaleIntercept", 0))
    ours = histogram_window(codes_from_array(frames), slope, intercept)
    theirs = percentile_window(modality_values(frames, dataset))
    assert ours.center == pytest.approx(theirs.center, abs=2) and ours.width == pytest.approx(theirs.width, abs=4)
