"""Bounded file input (a size is checked before any byte is read) and whole-or-nothing text output."""

from __future__ import annotations

import os
import tempfile
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


def write_text_atomically(destination: Path, text: str) -> None:
    """Write ``text`` so that ``destination`` appears whole or not at all (temporary file, fsync, rename)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".partial-", dir=destination.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
