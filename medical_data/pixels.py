"""Pixels as a radiologist sees them: decoded, in modality units (HU for CT), windowed to [0, 1].

Decoding is pydicom's (with pylibjpeg, its plugins, python-gdcm and pyjpegls installed it handles
every transfer syntax they can); this module adds the rendering chain of PS3.3 C.11 around it:
modality LUT (rescale slope/intercept, also per frame in enhanced objects), VOI window from the
header or a named preset, MONOCHROME1 inversion, palette colour and YBR to RGB.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, get_decoder

from medical_data.dicom_io import (
    DEFAULT_LIMITS,
    DicomLimits,
    expected_native_pixel_bytes,
    quiet_pydicom,
    typed_dicom_errors,
)
from medical_data.errors import DicomLimitError, MissingPixelDataError, UndecodablePixelDataError


@dataclass(frozen=True)
class Window:
    """A linear VOI window (PS3.3 C.11.2.1.2), in modality units."""

    center: float
    width: float
    name: str = "custom"

    def __post_init__(self) -> None:
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width < 1:
            raise ValueError("a window needs a finite centre and a width of at least 1")

    @property
    def bounds(self) -> tuple[float, float]:
        return self.center - self.width / 2, self.center + self.width / 2


# Common CT windows, centre/width in HU.
CT_PRESETS: dict[str, Window] = {
    "lung": Window(-600, 1500, "lung"),
    "mediastinum": Window(40, 400, "mediastinum"),
    "bone": Window(400, 1800, "bone"),
    "brain": Window(40, 80, "brain"),
    "abdomen": Window(50, 400, "abdomen"),
}
# The three windows MedGemma renders CT with, one per RGB channel: wide (-1024..1024 HU),
# soft tissue (-135..215 HU) and brain (0..80 HU).
CT_THREE_WINDOWS: tuple[Window, Window, Window] = (
    Window(0, 2048, "wide"),
    Window(40, 350, "soft-tissue"),
    Window(40, 80, "brain"),
)
PERCENTILE_RANGE = (0.5, 99.5)


@dataclass(frozen=True)
class RenderedPixels:
    """Display-ready pixels and how they were made."""

    pixels: np.ndarray = field(repr=False)
    """float32 in [0, 1], shape (frames, rows, columns, channels), channels 1 or 3."""
    window: tuple[Window, ...]
    """The window(s) applied; empty for colour images, which are only rescaled."""
    photometric_interpretation: str
    modality_units: str
    """'HU' for CT after the modality LUT, else 'stored values' or 'RGB'."""


def decode_frames(dataset: Dataset, limits: DicomLimits = DEFAULT_LIMITS) -> tuple[np.ndarray, str]:
    """Decode the pixel data to (frames, rows, columns[, samples]) and its photometric interpretation.

    YBR colour is converted to RGB by the decoder. Raises typed errors for missing, oversized or
    undecodable pixel data.
    """
    if "PixelData" not in dataset:
        raise MissingPixelDataError("the object holds no pixel data")
    try:
        size = expected_native_pixel_bytes(dataset)
    except (AttributeError, TypeError, ValueError):
        raise MissingPixelDataError("the image geometry (rows, columns, bits) is missing or invalid") from None
    if size > limits.max_pixel_bytes:
        raise DicomLimitError(f"pixel data would decode to {size} bytes, over the {limits.max_pixel_bytes} limit")
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    with quiet_pydicom():
        try:
            decoder = get_decoder(transfer_syntax)
        except NotImplementedError:
            raise UndecodablePixelDataError(f"no decoder for transfer syntax {transfer_syntax}") from None
        if not decoder.is_available:
            raise UndecodablePixelDataError(
                f"no installed plugin decodes {transfer_syntax.name}; install pylibjpeg, python-gdcm or pyjpegls"
            )
        try:
            array, meta = decoder.as_array(dataset, as_rgb=True)
        except MemoryError:
            raise DicomLimitError("pixel data too large to decode") from None
        except Exception as exc:  # every plugin raises its own types; all mean "cannot decode this"
            raise UndecodablePixelDataError(f"pixel data could not be decoded ({type(exc).__name__})") from None
    frames = int(meta.get("number_of_frames", 1) or 1)
    samples = int(meta.get("samples_per_pixel", 1) or 1)
    if frames == 1:
        array = array[np.newaxis]
    if samples == 1 and array.ndim == 4:
        array = array[..., 0]
    return array, str(meta.get("photometric_interpretation", dataset.get("PhotometricInterpretation", "")))


def _rescale_for_frame(dataset: Dataset, frame: int) -> tuple[float, float]:
    """Rescale slope and intercept of one frame: per-frame, shared functional groups, then top level."""
    for groups in (
        _item(dataset.get("PerFrameFunctionalGroupsSequence"), frame),
        _item(dataset.get("SharedFunctionalGroupsSequence"), 0),
    ):
        transformation = _item(groups.get("PixelValueTransformationSequence") if groups else None, 0)
        if transformation is not None and "RescaleSlope" in transformation:
            return float(transformation.RescaleSlope), float(transformation.get("RescaleIntercept", 0.0))
    return float(dataset.get("RescaleSlope", 1.0) or 1.0), float(dataset.get("RescaleIntercept", 0.0) or 0.0)


def _item(sequence: object, index: int) -> Dataset | None:
    if sequence is None or len(sequence) <= index:  # type: ignore[arg-type]
        return None
    return sequence[index]  # type: ignore[index]


def modality_values(frames: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the modality LUT (rescale slope/intercept) per frame; float32 out (HU for CT)."""
    values = frames.astype(np.float32, copy=True)
    for index in range(values.shape[0]):
        slope, intercept = _rescale_for_frame(dataset, index)
        if slope != 1.0 or intercept != 0.0:
            values[index] = values[index] * np.float32(slope) + np.float32(intercept)
    return values


def header_window(dataset: Dataset, frame: int = 0) -> Window | None:
    """The first window the header recommends (top level, or the frame's VOI LUT functional group)."""
    candidates = [dataset]
    for groups in (
        _item(dataset.get("PerFrameFunctionalGroupsSequence"), frame),
        _item(dataset.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups is not None:
            candidates.append(_item(groups.get("FrameVOILUTSequence"), 0))
    for candidate in candidates:
        if candidate is None or "WindowCenter" not in candidate or "WindowWidth" not in candidate:
            continue
        center, width = _first(candidate.WindowCenter), _first(candidate.WindowWidth)
        try:
            return Window(float(center), float(width), "header")
        except (TypeError, ValueError):
            continue  # a malformed header window is ignored, not fatal
    return None


def _first(value: object) -> object:
    return value[0] if isinstance(value, MultiValue | list | tuple) else value


def percentile_window(
    values: np.ndarray, low: float = PERCENTILE_RANGE[0], high: float = PERCENTILE_RANGE[1]
) -> Window:
    """A robust window spanning the given percentiles (for MR, US, CR, DX without a header window)."""
    lo, hi = np.percentile(values, [low, high])
    return Window(float(lo + hi) / 2, max(float(hi - lo), 1.0), f"p{low:g}-p{high:g}")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """The DICOM linear VOI function, scaled to [0, 1] (PS3.3 C.11.2.1.2.1)."""
    center, width = window.center - 0.5, window.width - 1.0
    if width <= 0:
        return (values > center).astype(np.float32)
    scaled = (values - center) / width + 0.5
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def choose_window(dataset: Dataset, percentile: Callable[[], Window], preset: str | None = None) -> Window:
    """A named CT preset, else the header's window, else a CT default or a robust percentile window."""
    if preset is not None:
        if preset not in CT_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; choose from {', '.join(CT_PRESETS)}")
        return CT_PRESETS[preset]
    window = header_window(dataset)
    if window is not None:
        return window
    if dataset.get("Modality") == "CT":
        return CT_PRESETS["mediastinum"]
    return percentile()


def _lut_indices(frames: np.ndarray) -> np.ndarray | None:
    """Integer pixels of at most 16 bits, viewed as unsigned lookup-table indices; None for other pixels."""
    if frames.dtype.kind not in "ui" or frames.dtype.itemsize > 2:
        return None
    return frames.view(np.dtype(f"u{frames.dtype.itemsize}"))


@functools.cache
def _stored_values(dtype: str) -> np.ndarray:
    """The stored value each lookup-table index means (two's complement for signed pixels)."""
    size = np.dtype(dtype).itemsize
    codes = np.arange(2 ** (8 * size), dtype=np.int64).astype(f"u{size}")
    values = codes.view(dtype).astype(np.float64)
    values.flags.writeable = False
    return values


@functools.cache
def _value_order(dtype: str) -> np.ndarray:
    """Lookup-table indices sorted by the value they mean (signed codes are not in value order)."""
    order = np.argsort(_stored_values(dtype), kind="stable")
    order.flags.writeable = False
    return order


@functools.lru_cache(maxsize=16)
def _scale_lut(dtype: str, peak: float) -> np.ndarray:
    """Stored colour value -> [0, 1] float32."""
    lut = np.clip(_stored_values(dtype) / peak, 0.0, 1.0).astype(np.float32)
    lut.flags.writeable = False
    return lut


def _to_unit_range(channels: np.ndarray, peak: float) -> np.ndarray:
    indices = _lut_indices(channels)
    if indices is None:
        return np.clip(channels.astype(np.float32) / np.float32(peak), 0.0, 1.0)
    return np.take(_scale_lut(channels.dtype.str, peak), indices)


@functools.lru_cache(maxsize=64)
def _window_lut(dtype: str, slope: float, intercept: float, window: Window, invert: bool) -> np.ndarray:
    """Stored value -> windowed [0, 1]: built once per series (its slices share all four parameters)."""
    lut = apply_window((_stored_values(dtype) * slope + intercept).astype(np.float32), window)
    lut = 1.0 - lut if invert else lut
    lut.flags.writeable = False
    return lut


def window_frames(
    frames: np.ndarray, rescales: list[tuple[float, float]], window: Window, invert: bool = False
) -> np.ndarray:
    """Stored values to windowed [0, 1] float32 in one pass: rescale, window and inversion fused.

    Integer pixels of at most 16 bits go through a cached lookup table of every possible stored value
    (the DICOM LUT pipeline: one gather over the image); others are computed in place. Both give
    ``apply_window(modality_values(...))`` to float32 rounding.
    """
    indices = _lut_indices(frames)
    if indices is not None and len(set(rescales)) == 1:
        slope, intercept = rescales[0]
        return np.take(_window_lut(frames.dtype.str, slope, intercept, window, invert), indices)
    out = frames.astype(np.float32)
    for index, (slope, intercept) in enumerate(rescales):
        out[index] = apply_window(out[index] * np.float32(slope) + np.float32(intercept), window)
    return 1.0 - out if invert else out


def percentile_window_of_stored(frames: np.ndarray, rescales: list[tuple[float, float]]) -> Window:
    """``percentile_window`` of the modality values, from a histogram when pixels are small integers."""
    indices = _lut_indices(frames)
    if indices is None or len(set(rescales)) != 1:
        return percentile_window(
            np.concatenate(
                [
                    (frame.astype(np.float32) * slope + intercept).ravel()
                    for frame, (slope, intercept) in zip(frames, rescales, strict=True)
                ]
            )
        )
    values, order = _stored_values(frames.dtype.str), _value_order(frames.dtype.str)
    slope, intercept = rescales[0]
    counts = np.bincount(indices.ravel(), minlength=len(values))
    cumulative = np.cumsum(counts[order]) / counts.sum()
    low, high = (values[order][np.searchsorted(cumulative, q / 100)] for q in PERCENTILE_RANGE)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return Window((low + high) / 2, max(high - low, 1.0), f"p{PERCENTILE_RANGE[0]:g}-p{PERCENTILE_RANGE[1]:g}")


def render(
    dataset: Dataset,
    *,
    preset: str | None = None,
    window: Window | None = None,
    three_window_ct: bool = False,
    limits: DicomLimits = DEFAULT_LIMITS,
) -> RenderedPixels:
    """Decode and render an image object to display-ready pixels.

    Args:
        dataset: a DICOM image object (single or multi-frame).
        preset: a CT window name from ``CT_PRESETS``; None uses the header window or a robust one.
        window: an explicit window (wins over ``preset``), e.g. to render every slice of a series alike.
        three_window_ct: render CT as RGB, one window per channel (``CT_THREE_WINDOWS``).
        limits: decoding bounds.

    Returns:
        RenderedPixels with pixels of shape (frames, rows, columns, channels) in [0, 1].

    Raises:
        ValueError: an unknown preset name (a caller's mistake, not the file's).
        DicomRejected: the file's pixels or header values cannot be used.
    """
    if preset is not None and preset not in CT_PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; choose from {', '.join(CT_PRESETS)}")
    return _render(dataset, preset, window, three_window_ct, limits)


@typed_dicom_errors
def _render(
    dataset: Dataset, preset: str | None, window: Window | None, three_window_ct: bool, limits: DicomLimits
) -> RenderedPixels:
    frames, photometric = decode_frames(dataset, limits)
    if photometric == "PALETTE COLOR":
        with quiet_pydicom():
            rgb = apply_color_lut(frames, dataset)
        peak = 65535.0 if rgb.dtype == np.uint16 else 255.0
        return RenderedPixels(_to_unit_range(rgb, peak), (), "RGB", "RGB")
    if frames.ndim == 4:  # RGB (YBR already converted by the decoder)
        peak = float(2 ** int(dataset.get("BitsStored", 8)) - 1)
        return RenderedPixels(_to_unit_range(frames, peak), (), "RGB", "RGB")
    rescales = [_rescale_for_frame(dataset, index) for index in range(frames.shape[0])]
    is_ct = dataset.get("Modality") == "CT"
    units = "HU" if is_ct else "stored values"
    if three_window_ct and is_ct:
        channels = np.stack([window_frames(frames, rescales, w) for w in CT_THREE_WINDOWS], axis=-1)
        return RenderedPixels(channels, CT_THREE_WINDOWS, photometric, units)
    window = window or choose_window(dataset, lambda: percentile_window_of_stored(frames, rescales), preset)
    pixels = window_frames(frames, rescales, window, invert=photometric == "MONOCHROME1")
    return RenderedPixels(pixels[..., np.newaxis], (window,), photometric, units)
