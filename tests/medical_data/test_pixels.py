from __future__ import annotations

import numpy as np
import pytest

from medical_data.dicom_io import read_dicom
from medical_data.errors import MissingPixelDataError, UndecodablePixelDataError
from medical_data.pixels import (
    CT_PRESETS,
    Window,
    apply_window,
    header_window,
    modality_values,
    percentile_window,
    render,
)

from .conftest import make_ct_slice, shipped_file


def test_dicom_linear_window_formula() -> None:
    window = Window(40, 400)
    values = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], dtype=np.float32)
    out = apply_window(values, window)
    assert out[0] == 0.0 and out[-1] == 1.0
    assert out[2] == pytest.approx(0.5 + 0.5 / 399, abs=1e-6)  # (x - (c - 0.5)) / (w - 1) + 0.5
    assert np.all(np.diff(out) >= 0)


def test_modality_lut_gives_hounsfield_units() -> None:
    stored = np.array([[0, 1024, 2024]], dtype=np.uint16)
    dataset = make_ct_slice(pixels=np.tile(stored, (3, 1)))
    hu = modality_values(stored[np.newaxis], dataset)
    assert hu.tolist() == [[[-1024.0, 0.0, 1000.0]]]


def test_ct_presets_render_air_water_bone_as_a_radiologist_expects() -> None:
    pixels = np.array([[24, 1024, 2024]], dtype=np.uint16)  # air -1000, water 0, bone +1000 HU
    dataset = make_ct_slice(pixels=np.tile(pixels, (2, 1)))
    lung = render(dataset, preset="lung").pixels[0, 0, :, 0]
    brain = render(dataset, preset="brain").pixels[0, 0, :, 0]
    assert lung.tolist() == pytest.approx([(-1000 + 600.5) / 1499 + 0.5, 600.5 / 1499 + 0.5, 1.0], abs=1e-5)
    assert brain.tolist() == [0.0, 0.0, 1.0]  # 0 HU is below the brain window (0..80) and reads black
    assert set(CT_PRESETS) == {"lung", "mediastinum", "bone", "brain", "abdomen"}


def test_three_window_ct_has_three_different_channels() -> None:
    rendered = render(read_dicom(shipped_file("CT_small.dcm")), three_window_ct=True)
    assert rendered.pixels.shape == (1, 128, 128, 3)
    channels = rendered.pixels[0].reshape(-1, 3)
    assert not np.allclose(channels[:, 0], channels[:, 1]) and not np.allclose(channels[:, 1], channels[:, 2])
    assert [w.name for w in rendered.window] == ["wide", "soft-tissue", "brain"]


def test_header_window_is_used_when_present() -> None:
    dataset = make_ct_slice()
    dataset.WindowCenter, dataset.WindowWidth = [-600, 40], [1500, 400]
    assert header_window(dataset) == Window(-600, 1500, "header")
    assert render(dataset).window == (Window(-600, 1500, "header"),)


def test_monochrome1_is_inverted_so_bright_means_dense() -> None:
    pixels = np.array([[0, 2000]] * 2, dtype=np.uint16)
    mono2 = render(make_ct_slice(pixels=pixels), preset="bone").pixels[0, 0, :, 0]
    mono1 = render(make_ct_slice(pixels=pixels, photometric="MONOCHROME1"), preset="bone").pixels[0, 0, :, 0]
    np.testing.assert_allclose(mono1, 1.0 - mono2)


def test_percentile_window_for_mr_ignores_outliers() -> None:
    values = np.concatenate([np.linspace(100, 200, 10_000), [1e6]]).astype(np.float32)
    window = percentile_window(values)
    assert window.bounds[1] < 1000


def test_palette_colour_becomes_rgb() -> None:
    rendered = render(read_dicom(shipped_file("OBXXXX1A.dcm")))
    assert rendered.photometric_interpretation == "RGB"
    assert rendered.pixels.shape[-1] == 3 and rendered.pixels.min() >= 0.0 and rendered.pixels.max() <= 1.0


def test_ybr_full_matches_its_rgb_twin() -> None:
    ybr = render(read_dicom(shipped_file("SC_ybr_full_uncompressed.dcm"))).pixels
    rgb = render(read_dicom(shipped_file("SC_rgb.dcm"))).pixels
    assert np.abs(ybr - rgb).max() < 8 / 255  # YCbCr rounding only


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",
        "JPEG-LL.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "emri_small_RLE.dcm",
        "MR2_J2KR.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "emri_small_big_endian.dcm",
    ],
)
def test_compressed_transfer_syntaxes_decode(name: str) -> None:
    rendered = render(read_dicom(shipped_file(name)))
    assert rendered.pixels.dtype == np.float32 and rendered.pixels.max() > 0


def test_lossless_decodes_equal_the_uncompressed_original() -> None:
    original = read_dicom(shipped_file("MR2_UNCR.dcm")).pixel_array
    from medical_data.pixels import decode_frames

    decoded, _ = decode_frames(read_dicom(shipped_file("MR2_J2KR.dcm")))
    np.testing.assert_array_equal(decoded[0], original)


def test_missing_and_undecodable_pixels_are_typed() -> None:
    with pytest.raises(MissingPixelDataError):
        render(read_dicom(shipped_file("rtplan.dcm")))
    with pytest.raises(UndecodablePixelDataError):
        render(read_dicom(shipped_file("JPEG-lossy.dcm")))  # a known-corrupt JPEG stream


def test_window_validation() -> None:
    with pytest.raises(ValueError):
        Window(0, 0)
    with pytest.raises(ValueError, match="unknown window preset"):
        render(make_ct_slice(), preset="liverish")


def test_a_decoder_panic_is_a_typed_rejection_not_a_crash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One corrupt byte in an RLE segment makes the Rust decoder panic (pyo3 PanicException, a
    BaseException): found by the fuzz test, kept here as a fixed case."""
    data = bytearray(shipped_file("emri_small_RLE.dcm").read_bytes())
    data[35342] = 239
    path = tmp_path / "corrupt_rle.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(UndecodablePixelDataError, match="PanicException"):
        render(read_dicom(path))
