"""Text burned into the pixels is found, masked and checked again; what cannot be cleared is quarantined."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from medical_data.deid import BurnedInAnnotationError, DicomDeidentifier, burned_in_risk
from medical_data.deid.burned_in import OcrSettings, PixelTextRedactor, _tesseract_words
from medical_data.pixels import render

from .burned_in_images import DATE, NAME, draw_text, glyph_mask, secondary_capture_with_text, ultrasound_with_text
from .conftest import make_ct_slice

SECRET = b"burned-in-test-site-secret-00000"


def _written(dataset: Dataset, **kwargs: object) -> Dataset:
    DicomDeidentifier(site_secret=SECRET, **kwargs).deidentify(dataset)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _read_back(dataset: Dataset) -> str:
    """What a plain OCR of the stored pixels reads, in several renderings (not the redactor's own passes)."""
    words = []
    for frame in render(dataset).pixels:
        gray = np.round(frame.max(axis=-1) * 255).astype(np.uint8)
        for image in (255 - gray, np.where(gray > 100, 0, 255).astype(np.uint8), np.where(gray > 200, 0, 255)):
            picture = Image.fromarray(np.pad(image.astype(np.uint8), 12, constant_values=255))
            for scale in (2, 3):
                buffer = io.BytesIO()
                picture.resize((picture.width * scale, picture.height * scale)).save(buffer, format="PNG")
                words += [word[5] for word in _tesseract_words(buffer.getvalue())]
    return " ".join(words).upper()


def _name_or_date_read(text: str) -> list[str]:
    pieces = [*NAME.split(), DATE, DATE.replace("-", ""), "03-15"]
    return [piece for piece in pieces if piece in text.replace(" ", "") or piece in text]


@pytest.mark.usefixtures("ocr")
@pytest.mark.parametrize("make", [ultrasound_with_text, secondary_capture_with_text])
def test_name_and_date_in_the_pixels_are_masked(make) -> None:  # type: ignore[no-untyped-def]
    original = make(seed=0)
    assert _name_or_date_read(_read_back(original)), "the fixture's text should be legible before redaction"
    before = render(original).pixels.copy()
    output = _written(original)
    assert output.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in output.DeidentificationMethodCodeSequence]  # Clean Pixel Data
    assert _name_or_date_read(_read_back(output)) == []
    after = render(output).pixels
    glyphs = glyph_mask(make, seed=0)
    assert (after[0].max(axis=-1)[glyphs] < 0.2).mean() > 0.95  # the drawn strokes are dark now
    changed = (np.abs(after - before).max(axis=-1) > 0.05)[0]
    assert changed.mean() < 0.1, "redaction should mask text, not the image"


@pytest.mark.usefixtures("ocr")
def test_every_frame_of_a_compressed_cine_is_masked() -> None:
    cine = ultrasound_with_text(seed=1, frames=3)
    cine.compress(RLELossless, generate_instance_uid=False)
    output = _written(cine)
    assert output.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian  # rewritten native
    assert int(output.NumberOfFrames) == 3 and output.BurnedInAnnotation == "NO"
    glyphs = glyph_mask(ultrasound_with_text, seed=1)
    frames = render(output).pixels.max(axis=-1)
    for frame in frames:
        assert (frame[glyphs] < 0.2).mean() > 0.95


@pytest.mark.usefixtures("ocr")
def test_what_cannot_be_cleared_is_quarantined_unless_its_modality_is_allowed() -> None:
    # two distinct frames but a budget of one: the object cannot be checked, so it is not written
    strict = PixelTextRedactor(OcrSettings(max_frames=1))
    with pytest.raises(BurnedInAnnotationError, match="distinct frames"):
        DicomDeidentifier(site_secret=SECRET, redactor=strict).deidentify(ultrasound_with_text(frames=2))
    with pytest.raises(BurnedInAnnotationError):  # the override names modalities: SC does not cover US
        DicomDeidentifier(site_secret=SECRET, redactor=strict, allow_burned_in=["SC"]).deidentify(
            ultrasound_with_text(frames=2)
        )
    allowed = ultrasound_with_text(frames=2)
    outcome = DicomDeidentifier(site_secret=SECRET, redactor=strict, allow_burned_in=["US"]).deidentify(allowed)
    assert allowed.BurnedInAnnotation == "YES"
    assert any("burned-in text may remain" in warning for warning in outcome.warnings)


def test_without_ocr_pixel_text_is_quarantined_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PixelTextRedactor, "available", staticmethod(lambda: False))
    with pytest.raises(BurnedInAnnotationError, match=r"tesseract-ocr\) is not installed"):
        DicomDeidentifier(site_secret=SECRET).deidentify(ultrasound_with_text())


def test_a_missing_flag_is_trusted_only_for_cross_sectional_modalities() -> None:
    ct = make_ct_slice()
    assert burned_in_risk(ct) is None
    for modality in ("CR", "DX", "US", "XA", "OT"):
        other = make_ct_slice()
        other.Modality = modality
        assert burned_in_risk(other) is not None, modality
    capture = secondary_capture_with_text()
    capture.Modality = "CT"  # a screen capture of a CT is still a screen capture
    assert "secondary capture" in str(burned_in_risk(capture))
    flagged = make_ct_slice()
    flagged.BurnedInAnnotation = "YES"
    assert burned_in_risk(flagged) == "BurnedInAnnotation is YES"
    cleared = ultrasound_with_text()
    cleared.BurnedInAnnotation = "NO"
    assert burned_in_risk(cleared) is None


def test_recognizable_visual_features_are_quarantined() -> None:
    face = make_ct_slice()
    face.RecognizableVisualFeatures = "YES"
    with pytest.raises(BurnedInAnnotationError, match="RecognizableVisualFeatures"):
        DicomDeidentifier(site_secret=SECRET).deidentify(face)
    outcome = DicomDeidentifier(site_secret=SECRET, allow_burned_in=["CT"]).deidentify(face)
    assert any("RecognizableVisualFeatures" in warning for warning in outcome.warnings)


def _grey_capture(pixels: np.ndarray) -> Dataset:
    from .burned_in_images import _dataset

    return _dataset("1.2.840.10008.5.1.4.1.1.7", "OT", pixels)


def _ellipse_with_text(text_level: int) -> np.ndarray:
    from PIL import ImageDraw

    image = Image.new("L", (320, 256), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((150, 60, 300, 220), fill=255)  # a bright structure sets the frame's range
    return np.asarray(draw_text(np.asarray(image), [(20, 10, f"{NAME} {DATE}")], size=16, fill=text_level))


@pytest.mark.usefixtures("ocr")
@pytest.mark.parametrize("level", [110, 150])
def test_dim_text_beside_a_bright_structure_is_masked(level: int) -> None:
    """Text drawn in a mid grey sits under every brightness threshold once something brighter is in the frame."""
    pixels = _ellipse_with_text(level)
    output = _written(_grey_capture(pixels))
    assert output.BurnedInAnnotation == "NO"
    strokes = pixels == level
    assert (output.pixel_array[strokes] != level).mean() > 0.95  # the strokes are masked
    assert _name_or_date_read(_read_back(output)) == []


@pytest.mark.usefixtures("ocr")
def test_text_the_header_window_hides_is_masked() -> None:
    """Stored values that the header's window shows as black are still text in the file."""
    pixels = np.zeros((256, 320), np.uint16)
    pixels[60:220, 150:300] = 1000
    glyphs = draw_text(np.zeros((256, 320), np.uint8), [(20, 10, f"{NAME} {DATE}")], size=16) > 128
    pixels[glyphs] = 20
    capture = _grey_capture(pixels.astype(np.uint8))
    capture.BitsAllocated, capture.BitsStored, capture.HighBit = 16, 16, 15
    capture.PixelData = pixels.tobytes()
    capture.WindowCenter, capture.WindowWidth = 600, 400  # 20 renders black
    output = _written(capture)
    assert output.BurnedInAnnotation == "NO"
    assert (output.pixel_array[glyphs] != 20).mean() > 0.95


@pytest.mark.usefixtures("ocr")
def test_very_large_text_on_a_scanned_form_is_masked() -> None:
    pixels = np.full((600, 1400), 235, np.uint8)
    pixels = draw_text(pixels, [(20, 40, "SMITH JOHN"), (300, 40, "DOB 1980")], size=170, fill=20)
    output = _written(_grey_capture(pixels))
    assert output.BurnedInAnnotation == "NO"
    read_back = _read_back(output)
    assert [word for word in ("SMITH", "JOHN", "1980") if word in read_back] == []
    for band in (slice(0, 250), slice(250, 600)):  # each line of text: filled, no stroke stands out of its box
        rows, columns = np.nonzero(pixels[band] == 20)
        area = output.pixel_array[band][rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        assert (area == area.min()).mean() > 0.9
