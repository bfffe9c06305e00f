"""Reading DICOM safely: bounded in size and nesting, typed rejections, nothing half-written.

pydicom does the parsing; this module adds what a hospital batch needs around it: limits checked
before work is spent, every parse failure turned into a typed reason, pydicom's value warnings kept
out of logs (they quote element values, which may be identifying), and atomic writes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medical_data.errors import (
    DicomLimitError,
    DicomRejected,
    MedicalDataError,
    NotDicomError,
    TruncatedDicomError,
)
from medical_data.files import size_within
from omniclinic_common.files import atomic_path

P = ParamSpec("P")
R = TypeVar("R")
GiB = 1024**3
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class DicomLimits:
    """Bounds that keep one bad file from costing unbounded time or memory."""

    max_file_bytes: int = 2 * GiB
    """Files larger than this are refused before reading."""
    max_sequence_depth: int = 16
    """Sequences nested deeper than this are refused (real IODs nest a handful of levels)."""
    max_pixel_bytes: int = 2 * GiB
    """Decoded pixel data larger than this (rows x columns x frames x samples x bytes) is refused."""
    max_inflated_bytes: int = 2 * GiB
    """A Deflated Explicit VR Little Endian dataset that inflates past this is refused (a deflate bomb)."""

    def __post_init__(self) -> None:
        if min(self.max_file_bytes, self.max_sequence_depth, self.max_pixel_bytes, self.max_inflated_bytes) <= 0:
            raise ValueError("DICOM limits must be positive")


DEFAULT_LIMITS = DicomLimits()


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value warnings, which quote element values (possibly names or IDs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def typed_dicom_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Turn any error pydicom raises on a malformed value into ``DicomRejected`` (values stay out of it)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with quiet_pydicom():
                return function(*args, **kwargs)
        except MedicalDataError:
            raise
        except Exception as exc:
            raise DicomRejected(f"malformed DICOM value ({type(exc).__name__})") from None

    return wrapper


def check_structure(dataset: Dataset, limits: DicomLimits = DEFAULT_LIMITS) -> int:
    """Walk the dataset without recursion; return the deepest sequence nesting.

    Checks each element's declared length against the bytes actually read *before* pydicom converts
    it (pydicom keeps what is there and goes on, so a crafted or cut file would otherwise be written
    back out corrupt), and the nesting depth against the limit.

    Raises:
        TruncatedDicomError: an element declares more bytes than the file holds.
        DicomLimitError: sequences nest deeper than ``limits.max_sequence_depth``.
    """
    deepest = 0
    stack: list[tuple[Dataset, int]] = [(dataset, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > limits.max_sequence_depth:
            raise DicomLimitError(f"sequences nested over the limit of {limits.max_sequence_depth}")
        deepest = max(deepest, depth)
        for raw in current.elements():  # raw elements stay unconverted
            if _is_short(raw):
                raise TruncatedDicomError(f"element {raw.tag} declares {raw.length} bytes but the file ends first")
            if raw.VR == "SQ" or (raw.VR in (None, "UN") and is_sequence(current, raw.tag)):
                stack.extend((item, depth + 1) for item in current[raw.tag].value)
    return deepest


def read_dicom(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    limits: DicomLimits = DEFAULT_LIMITS,
    stop_before_pixels: bool = False,
    require_sop_instance: bool = True,
) -> FileDataset:
    """Read a DICOM file completely, or reject it with a typed reason.

    A file without the 128-byte preamble and ``DICM`` prefix is accepted only if it still parses as a
    dataset with SOP identity (old ACR-NEMA style exports); anything else is ``NotDicomError``.

    Args:
        source: a path or a binary file object.
        limits: size and nesting bounds.
        stop_before_pixels: skip the pixel data (fast header scans).
        require_sop_instance: reject objects without a SOP Instance UID (False for DICOMDIRs).

    Returns:
        The dataset. Truncation and impossible lengths show here; a malformed value (a date that is
        not a date) shows where it is used, as a ``DicomRejected`` from the functions wrapped in
        ``typed_dicom_errors``.

    Raises:
        DicomRejected: subclasses say why (not DICOM, truncated, over a limit).
    """
    source = _bounded_source(source, limits)
    _check_deflated(source, limits)
    with quiet_pydicom():
        try:
            try:
                dataset = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                _rewind(source)
                dataset = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
                if (
                    "SOPInstanceUID" not in dataset
                    and "SOPClassUID" not in dataset
                    and "DirectoryRecordSequence" not in dataset
                ):
                    raise NotDicomError("not a DICOM file (no DICM prefix and no SOP identity)") from None
            if len(dataset) == 0:
                raise TruncatedDicomError("no data elements could be parsed (truncated or corrupt)")
            check_structure(dataset, limits)
            if not stop_before_pixels:
                _check_pixel_data(dataset, limits)
                if _is_image_storage(dataset) and not _has_pixels(dataset):
                    raise TruncatedDicomError("an image object without pixel data (truncated?)")
            if require_sop_instance and "SOPInstanceUID" not in dataset:
                raise DicomRejected("not a complete DICOM object (no SOP Instance UID)")
            _fill_transfer_syntax(dataset)
            if dataset.file_meta.TransferSyntaxUID not in AllTransferSyntaxes:
                raise DicomRejected("unknown transfer syntax: the file cannot be read reliably")
        except DicomRejected:
            raise
        except RecursionError:
            raise DicomLimitError("sequences nested too deep to parse") from None
        except MemoryError:
            raise DicomLimitError("an element is too large to read") from None
        except (EOFError, struct.error, OverflowError) as exc:
            raise TruncatedDicomError(
                f"file ends early or has an impossible element length ({type(exc).__name__})"
            ) from None
        except Exception as exc:  # pydicom raises many types (ValueError, BytesLengthException, ...) on bad input
            raise DicomRejected(f"malformed DICOM ({type(exc).__name__})") from None
    return dataset


def _bounded_source(source: str | os.PathLike[str] | BinaryIO, limits: DicomLimits) -> str | BinaryIO:
    """A path whose size is within the limit, or a stream with no more than ``max_file_bytes`` left.

    A seekable stream is measured from where it stands; any other is read into memory, one byte past
    the limit at most, so a stream costs no more than a file of the same size.
    """
    if isinstance(source, str | os.PathLike):
        size = size_within(
            Path(source), limits.max_file_bytes, what="DICOM", limit_error=DicomLimitError, read_error=DicomRejected
        )
        if size == 0:
            raise NotDicomError("file is empty")
        return str(source)
    try:
        if source.seekable():
            start = source.tell()
            size = source.seek(0, os.SEEK_END) - start
            source.seek(start)
        else:
            source = io.BytesIO(source.read(limits.max_file_bytes + 1))
            size = len(source.getbuffer())
    except (OSError, ValueError) as exc:
        raise DicomRejected(f"cannot read the DICOM stream ({type(exc).__name__})") from None
    if size > limits.max_file_bytes:
        raise DicomLimitError(f"DICOM stream holds over {limits.max_file_bytes} bytes, the limit")
    if size == 0:
        raise NotDicomError("the stream is empty")
    return source


def _check_deflated(source: str | BinaryIO, limits: DicomLimits) -> None:
    """Inflate a Deflated Explicit VR Little Endian dataset with a bound before pydicom inflates it whole.

    pydicom inflates the rest of the file in one ``zlib.decompress`` call, so a few kilobytes can ask
    for gigabytes. The file meta group is read first; only a deflated transfer syntax costs more.

    Raises:
        DicomLimitError: the dataset inflates past ``limits.max_inflated_bytes``.
        TruncatedDicomError: the deflated bytes are corrupt or cut.
    """
    handle = open(source, "rb") if isinstance(source, str) else source  # noqa: SIM115 - closed below
    start = handle.tell()
    try:
        with quiet_pydicom():
            try:
                read_preamble(handle, True)
                deflated = _read_file_meta_info(handle).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
            except Exception:  # not this function's to judge: dcmread reports it with its reason
                return
        if not deflated:
            return
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        try:
            while chunk := handle.read(1024 * 1024):
                inflated += len(inflater.decompress(chunk, limits.max_inflated_bytes + 1 - inflated))
                if inflated > limits.max_inflated_bytes or inflater.unconsumed_tail:
                    raise DicomLimitError(f"deflated dataset inflates past the {limits.max_inflated_bytes} byte limit")
            inflated += len(inflater.flush())
        except zlib.error:
            raise TruncatedDicomError("the deflated dataset is corrupt") from None
        if not inflater.eof:
            raise TruncatedDicomError("the deflated dataset ends early")
    finally:
        if isinstance(source, str):
            handle.close()
        else:
            handle.seek(start)


def _fill_transfer_syntax(dataset: FileDataset) -> None:
    """Files without file meta (ACR-NEMA style) get the transfer syntax they were actually read with."""
    if "TransferSyntaxUID" in dataset.file_meta:
        return
    implicit, little = dataset.original_encoding
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def is_sequence(dataset: Dataset, tag: BaseTag) -> bool:
    """Whether an element is a sequence, without parsing it when the raw VR says so.

    Implicit-VR files carry no VR (None), and some senders mark sequences UN: for those the data
    dictionary decides, and only then is the element converted.
    """
    raw = dataset.get_item(tag)
    vr = raw.VR if raw is not None else None
    if vr == "SQ":
        return True
    if vr in (None, "UN"):
        try:
            return dictionary_VR(tag) == "SQ" and dataset[tag].VR == "SQ"
        except KeyError:
            return False
    return False


def _is_short(raw: object) -> bool:
    """A raw element whose value holds fewer bytes than its header declares."""
    if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH or raw.value is None:
        return False
    return len(raw.value) < raw.length


def _is_image_storage(dataset: Dataset) -> bool:
    sop_class = dataset.get("SOPClassUID")
    return sop_class is not None and names_image_storage(str(sop_class))


@functools.cache
def names_image_storage(sop_class_uid: str) -> bool:
    return UID(sop_class_uid).name.endswith("Image Storage")


def _has_pixels(dataset: Dataset) -> bool:
    return any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def expected_native_pixel_bytes(dataset: Dataset) -> int:
    """Bytes of uncompressed pixel data implied by the image geometry."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if dataset.get("PhotometricInterpretation") == "YBR_FULL_422":  # chroma subsampled 2:1 horizontally
        samples = 2
    pixels = int(dataset.Rows) * int(dataset.Columns) * frames * samples
    bits = int(dataset.BitsAllocated)
    return (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)


def _check_pixel_data(dataset: Dataset, limits: DicomLimits) -> None:
    if not all(keyword in dataset for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated")):
        return
    expected = expected_native_pixel_bytes(dataset)
    if expected > limits.max_pixel_bytes:
        raise DicomLimitError(f"pixel data would decode to {expected} bytes, over the {limits.max_pixel_bytes} limit")
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        try:
            for _ in generate_fragments(dataset.PixelData):
                pass
        except (ValueError, EOFError, struct.error) as exc:
            raise TruncatedDicomError(f"encapsulated pixel data is broken ({type(exc).__name__})") from None
    elif len(dataset.PixelData) < expected:
        raise TruncatedDicomError(f"pixel data holds {len(dataset.PixelData)} of {expected} bytes")


def _rewind(source: object) -> None:
    if hasattr(source, "seek"):
        source.seek(0)  # type: ignore[attr-defined]


UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digit components joined by dots, at most 64 characters. Only such a
    value ever names a file, a folder or a URL path here."""
    return 0 < len(value) <= 64 and bool(UID_PATTERN.match(value))


def write_atomically(dataset: Dataset, destination: Path) -> None:
    """Write ``dataset`` to ``destination`` so that the file appears whole or not at all."""
    with atomic_path(destination) as temporary, quiet_pydicom():
        dataset.save_as(temporary, enforce_file_format=True)
