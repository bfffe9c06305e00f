"""Whole-or-nothing file output and private (0600) key files: the one implementation of each.

A file is written beside its destination under a temporary name, flushed to disk and renamed into
place (``os.replace`` is atomic on POSIX and Windows), so a reader sees the old file or the new one,
never half of one. A private file is created with mode 0600 from the start (``O_EXCL``: an existing
file is never overwritten), and one that other users can read is refused, as ssh refuses such a key.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PrivateFileError(ValueError):
    """A private file that other users can read, or that cannot be created. The message says the fix."""


@contextmanager
def atomic_path(destination: Path, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``destination`` to write to; it becomes ``destination`` when the block
    ends without an error and is removed when it raises."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".partial-", dir=destination.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        if mode is not None:
            os.chmod(temporary, mode)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(destination: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write bytes, or text as UTF-8, so that ``destination`` appears whole or not at all."""
    with atomic_path(destination, mode=mode) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def create_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``data``; False (nothing written) when it exists already.

    Raises:
        PrivateFileError: the file cannot be created (the reason, not a traceback).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise PrivateFileError(f"cannot create the key file {path} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written key behind to be read next time
        raise
    return True


def read_private_file(path: Path) -> bytes:
    """The bytes of a private file, refused when other users can read or write it.

    Raises:
        PrivateFileError: the file is too permissive.
        OSError: it cannot be read.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PrivateFileError(f"the key file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")
    return path.read_bytes()


def replace_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all, with mode 0600 from the first byte."""
    with atomic_path(path, mode=0o600) as temporary:  # mkstemp makes it 0600 already
        temporary.write_bytes(data)
