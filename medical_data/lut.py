"""Lookup tables over stored pixel codes: the DICOM rendering chain as one gather per image.

Stored values are integers of at most 16 bits, so every step from a stored code to a display value
(unused high bits, sign, rescale slope and intercept, VOI window, MONOCHROME1 inversion) folds into
one table of at most 65,536 entries. A series shares its table across slices (cached), and native
pixel data is indexed where it lies in the file's bytes: no decode copy, no masking pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medical_data.windows import PERCENTILE_RANGE, Window, apply_window, window_between

NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


@dataclass(frozen=True)
class StoredCodes:
    """Pixels as unsigned codes, and how to read a code as a stored value."""

    codes: np.ndarray = field(repr=False)
    """uint8 or uint16, (frames, rows, columns[, samples])."""
    bits_stored: int
    signed: bool

    @property
    def itemsize(self) -> int:
        return self.codes.dtype.itemsize


def codes_from_array(frames: np.ndarray) -> StoredCodes | None:
    """Decoded integer pixels (already masked and sign-extended) as codes; None for wider or float pixels."""
    if frames.dtype.kind not in "ui" or frames.dtype.itemsize > 2:
        return None
    if not frames.dtype.isnative:  # big-endian data from the decoder
        frames = frames.astype(frames.dtype.newbyteorder("="))
    unsigned = frames.view(np.dtype(f"u{frames.dtype.itemsize}"))
    return StoredCodes(unsigned, 8 * frames.dtype.itemsize, frames.dtype.kind == "i")


def native_codes(dataset: Dataset) -> StoredCodes | None:
    """A zero-copy view of uncompressed little-endian greyscale pixel data; None when it needs a decoder."""
    if dataset.file_meta.get("TransferSyntaxUID") not in NATIVE_LITTLE_ENDIAN:
        return None
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if dataset.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    bits_allocated = int(dataset.BitsAllocated)
    bits_stored = int(dataset.get("BitsStored", bits_allocated) or bits_allocated)
    high_bit = int(dataset.get("HighBit", bits_stored - 1))
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated or high_bit != bits_stored - 1:
        return None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    shape = (frames, int(dataset.Rows), int(dataset.Columns))
    itemsize = bits_allocated // 8
    data = dataset.PixelData
    count = shape[0] * shape[1] * shape[2]
    if not isinstance(data, bytes) or len(data) < count * itemsize:
        return None
    codes = np.frombuffer(data, dtype=f"<u{itemsize}", count=count).reshape(shape)
    return StoredCodes(codes, bits_stored, int(dataset.get("PixelRepresentation", 0) or 0) == 1)


@functools.cache
def code_values(itemsize: int, bits_stored: int, signed: bool) -> np.ndarray:
    """The stored value of every code: unused high bits dropped, two's complement sign applied."""
    codes = np.arange(2 ** (8 * itemsize), dtype=np.int64)
    values = codes & ((1 << bits_stored) - 1)
    if signed:
        values = np.where(values >= 1 << (bits_stored - 1), values - (1 << bits_stored), values)
    result = values.astype(np.float64)
    result.flags.writeable = False
    return result


@functools.cache
def _value_order(itemsize: int, bits_stored: int, signed: bool) -> np.ndarray:
    order = np.argsort(code_values(itemsize, bits_stored, signed), kind="stable")
    order.flags.writeable = False
    return order


@functools.lru_cache(maxsize=64)
def window_lut(
    itemsize: int, bits_stored: int, signed: bool, slope: float, intercept: float, window: Window, invert: bool
) -> np.ndarray:
    """Code -> windowed [0, 1] float32."""
    values = (code_values(itemsize, bits_stored, signed) * slope + intercept).astype(np.float32)
    lut = apply_window(values, window)
    lut = 1.0 - lut if invert else lut
    lut.flags.writeable = False
    return lut


@functools.lru_cache(maxsize=16)
def scale_lut(itemsize: int, bits_stored: int, signed: bool, peak: float) -> np.ndarray:
    """Code -> value / peak, clipped to [0, 1] (colour samples)."""
    lut = np.clip(code_values(itemsize, bits_stored, signed) / peak, 0.0, 1.0).astype(np.float32)
    lut.flags.writeable = False
    return lut


def windowed(stored: StoredCodes, rescales: list[tuple[float, float]], window: Window, invert: bool) -> np.ndarray:
    """Every frame through its (cached) table: float32 (frames, rows, columns) in [0, 1]."""
    key = (stored.itemsize, stored.bits_stored, stored.signed)
    if len(set(rescales)) == 1:
        return np.take(window_lut(*key, *rescales[0], window, invert), stored.codes)
    out = np.empty(stored.codes.shape, dtype=np.float32)
    for index, (slope, intercept) in enumerate(rescales):
        np.take(window_lut(*key, slope, intercept, window, invert), stored.codes[index], out=out[index])
    return out


def scaled(stored: StoredCodes, peak: float) -> np.ndarray:
    return np.take(scale_lut(stored.itemsize, stored.bits_stored, stored.signed, peak), stored.codes)


def histogram_window(
    stored: StoredCodes, slope: float, intercept: float, percentiles: tuple[float, float] = PERCENTILE_RANGE
) -> Window:
    """The percentile window of the modality values, from a histogram of the codes (no sort of pixels)."""
    key = (stored.itemsize, stored.bits_stored, stored.signed)
    values, order = code_values(*key), _value_order(*key)
    counts = np.bincount(stored.codes.ravel(), minlength=len(values))
    cumulative = np.cumsum(counts[order]) / counts.sum()
    low, high = (values[order][min(np.searchsorted(cumulative, q / 100), len(order) - 1)] for q in percentiles)
    return window_between(low * slope + intercept, high * slope + intercept, f"p{percentiles[0]:g}-p{percentiles[1]:g}")
