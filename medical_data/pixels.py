"""Pixels as a radiologist sees them: decoded, in modality units (HU for CT), windowed to [0, 1].

Decoding is pydicom's (with pylibjpeg, its plugins, python-gdcm and pyjpegls installed it handles
every transfer syntax they can); this module adds the rendering chain of PS3.3 C.11 around it:
modality LUT (rescale slope/intercept, also per frame in enhanced objects), VOI window from the
header or a named preset, MONOCHROME1 inversion, palette colour and YBR to RGB.
"""

from __future__ import annotations

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
from medical_data.lut import StoredCodes, codes_from_array, histogram_window, native_codes, scaled, windowed
from medical_data.windows import (
    CT_PRESETS,
    CT_THREE_WINDOWS,
    Window,
    apply_window,
    percentile_window,
    preset_window,
)

__all__ = [
    "CT_PRESETS",
    "CT_THREE_WINDOWS",
    "RenderedPixels",
    "Window",
    "apply_window",
    "choose_window",
    "decode_frames",
    "header_window",
    "modality_values",
    "percentile_window",
    "render",
]


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


def _check_decodable(dataset: Dataset, limits: DicomLimits) -> None:
    if "PixelData" not in dataset:
        raise MissingPixelDataError("the object holds no pixel data")
    try:
        size = expected_native_pixel_bytes(dataset)
    except (AttributeError, TypeError, ValueError):
        raise MissingPixelDataError("the image geometry (rows, columns, bits) is missing or invalid") from None
    if size > limits.max_pixel_bytes:
        raise DicomLimitError(f"pixel data would decode to {size} bytes, over the {limits.max_pixel_bytes} limit")


def decode_frames(dataset: Dataset, limits: DicomLimits = DEFAULT_LIMITS) -> tuple[np.ndarray, str]:
    """Decode the pixel data to (frames, rows, columns[, samples]) and its photometric interpretation.

    YBR colour is converted to RGB by the decoder. Raises typed errors for missing, oversized or
    undecodable pixel data.
    """
    _check_decodable(dataset, limits)
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
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # every plugin raises its own types, and a Rust decoder's panic
            # (pyo3's PanicException) is a BaseException: all mean "cannot decode this"
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


def choose_window(dataset: Dataset, percentile: Callable[[], Window], preset: str | None = None) -> Window:
    """A named CT preset, else the header's window, else a CT default or a robust percentile window."""
    if preset is not None:
        return preset_window(preset)
    window = header_window(dataset)
    if window is not None:
        return window
    if dataset.get("Modality") == "CT":
        return CT_PRESETS["mediastinum"]
    return percentile()


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
    if preset is not None:
        preset_window(preset)  # a caller's mistake: raised as it is, not as the file's fault
    return _render(dataset, preset, window, three_window_ct, limits)


@typed_dicom_errors
def _render(
    dataset: Dataset, preset: str | None, window: Window | None, three_window_ct: bool, limits: DicomLimits
) -> RenderedPixels:
    _check_decodable(dataset, limits)
    stored = native_codes(dataset)  # uncompressed greyscale: indexed where it lies, no decode copy
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    frames = None
    if stored is None:
        frames, photometric = decode_frames(dataset, limits)
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(frames, dataset)
            return RenderedPixels(_unit_range(rgb, 65535.0 if rgb.dtype == np.uint16 else 255.0), (), "RGB", "RGB")
        if frames.ndim == 4:  # RGB (YBR already converted by the decoder)
            peak = float(2 ** int(dataset.get("BitsStored", 8)) - 1)
            return RenderedPixels(_unit_range(frames, peak), (), "RGB", "RGB")
        stored = codes_from_array(frames)
    rescales = [_rescale_for_frame(dataset, index) for index in range(int(dataset.get("NumberOfFrames", 1) or 1))]
    is_ct = dataset.get("Modality") == "CT"
    units = "HU" if is_ct else "stored values"
    invert = photometric == "MONOCHROME1"  # high values are dark: invert so that 1 is always bright

    def draw(w: Window, inverted: bool) -> np.ndarray:
        if stored is not None:
            return windowed(stored, rescales, w, inverted)
        values = apply_window(modality_values(frames, dataset), w)  # float or 32-bit pixels
        return 1.0 - values if inverted else values

    if three_window_ct and is_ct:
        channels = np.stack([draw(w, False) for w in CT_THREE_WINDOWS], axis=-1)
        return RenderedPixels(channels, CT_THREE_WINDOWS, photometric, units)
    window = window or choose_window(dataset, lambda: _robust_window(stored, frames, dataset, rescales), preset)
    return RenderedPixels(draw(window, invert)[..., np.newaxis], (window,), photometric, units)


def _unit_range(channels: np.ndarray, peak: float) -> np.ndarray:
    stored = codes_from_array(channels)
    if stored is None:
        return np.clip(channels.astype(np.float32) / np.float32(peak), 0.0, 1.0)
    return scaled(stored, peak)


def _robust_window(
    stored: StoredCodes | None, frames: np.ndarray | None, dataset: Dataset, rescales: list[tuple[float, float]]
) -> Window:
    if stored is not None and len(set(rescales)) == 1:
        return histogram_window(stored, *rescales[0])
    if frames is None:
        frames = decode_frames(dataset)[0]
    return percentile_window(modality_values(frames, dataset))
