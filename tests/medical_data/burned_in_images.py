"""Ultrasound and secondary-capture objects with a patient's name and a date drawn into the pixels (PIL)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, UltrasoundImageStorage, generate_uid

NAME, DATE = "DOE JANE", "2024-03-15"


def _fan(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """An ultrasound sector of speckle on black."""
    image = np.zeros((rows, columns), np.uint8)
    yy, xx = np.mgrid[:rows, :columns]
    apex_y, centre = -rows // 8, columns // 2
    radius = np.hypot(xx - centre, yy - apex_y)
    fan = (radius < rows * 0.95) & (np.abs(xx - centre) < (yy - apex_y) * 0.8) & (yy > rows // 8)
    image[fan] = np.clip(rng.rayleigh(45, int(fan.sum())), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)))  # speckle is a few pixels wide


def draw_text(pixels: np.ndarray, lines: list[tuple[int, int, str]], size: int = 14, fill: int = 255) -> np.ndarray:
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    for top, left, text in lines:
        draw.text((left, top), text, fill=fill if pixels.ndim == 2 else (fill, fill, fill // 2), font=font)
    return np.asarray(image)


def _dataset(sop_class: str, modality: str, pixels: np.ndarray, frames: int = 1) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-4477821"
    ds.StudyDate = "20240315"
    colour = pixels.ndim == (4 if frames > 1 else 3)
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


US_TEXT = [(8, 10, NAME), (8, 500, DATE), (300, 270, NAME)]
SC_TEXT = [(10, 12, f"{NAME}  {DATE}")]


def glyph_mask(make: object, seed: int = 0, size: int | None = None) -> np.ndarray:
    """Where the strokes of the text drawn by ``make`` lie (rows x columns, True on a stroke)."""
    if make is ultrasound_with_text:
        blank, lines, size = np.zeros((480, 640), np.uint8), US_TEXT, size or 14
    else:
        blank, lines, size = np.zeros((256, 320), np.uint8), SC_TEXT, size or 16
    return draw_text(blank, lines, size=size) > 128


def ultrasound_with_text(seed: int = 0, frames: int = 1, size: int = 14) -> Dataset:
    """A 480x640 grey ultrasound (cine when ``frames`` > 1) with the name top left and the date top right,
    and the name again written over the speckle."""
    rng = np.random.default_rng(seed)
    stack = []
    for _ in range(frames):
        frame = _fan(rng, 480, 640)
        stack.append(draw_text(frame, US_TEXT, size=size))
    pixels = np.stack(stack) if frames > 1 else stack[0]
    return _dataset(UltrasoundImageStorage if frames == 1 else "1.2.840.10008.5.1.4.1.1.3.1", "US", pixels, frames)


def secondary_capture_with_text(seed: int = 0) -> Dataset:
    """A 256x320 RGB screen capture: a grey image panel and a text banner with the name and the date."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((256, 320, 3), np.uint8)
    panel = rng.integers(0, 256, (180, 280), dtype=np.uint8)
    panel = np.asarray(Image.fromarray(panel).filter(ImageFilter.GaussianBlur(2.0)))
    rgb[60:240, 20:300] = np.clip((panel.astype(np.int16) - 128) * 4 + 110, 20, 210)[..., None]
    rgb = draw_text(rgb, SC_TEXT, size=16)
    return _dataset(SecondaryCaptureImageStorage, "OT", rgb)
