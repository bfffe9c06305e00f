"""Model folders prepared once (joined, converted) and published atomically into a cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def building_folder(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside ``target``; on success it becomes ``target`` in one rename.

    A failure removes the staging folder: a half-made model folder is never seen. If ``target``
    exists (another process published it meanwhile), it is kept and this one dropped, or, with
    ``replace`` (a training run's ``final/`` saved again), removed just before the rename.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists() and not replace:
            shutil.rmtree(staging)
        else:
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(staging, target)
            except OSError:  # another process published it between the check and the rename
                if replace or not target.exists():
                    raise
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
