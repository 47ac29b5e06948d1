"""Atomic output: write to a temporary name beside the target, rename on success.

A killed or failing job therefore never leaves a file that looks valid at the final path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from disttgl.errors import DataError


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create the parent directory of ``path`` and check it can be written; return ``Path(path)``."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(parent, f"cannot create output directory ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(parent, "output directory is not writable")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it over ``path`` only on success."""
    target = check_writable_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise DataError(target.parent, f"cannot write in output directory ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only; give it the mode a plain open() would (shared data folders)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
