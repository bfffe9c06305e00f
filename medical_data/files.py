"""Bounded file input: a size is checked before any byte is read."""

from __future__ import annotations

from pathlib import Path

from medical_data.errors import MedicalDataError


def size_within(
    path: Path, limit: int, *, what: str, limit_error: type[MedicalDataError], read_error: type[MedicalDataError]
) -> int:
    """The file's size, or a typed error: unreadable (``read_error``) or over ``limit`` bytes (``limit_error``)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise read_error(f"cannot read the {what} file ({exc.strerror})") from None
    if size > limit:
        raise limit_error(f"{what} file is {size} bytes, over the {limit} byte limit")
    return size
