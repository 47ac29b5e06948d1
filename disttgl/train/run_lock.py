"""One writer per run directory.

A training run owns ``RUN_DIR`` (checkpoint, metrics, memory files) while it runs. A second run
on the same directory (a rerun while an orphan of a killed workflow still trains, two workflows
on one results folder) would interleave their files. ``run_dir_lock`` holds an exclusive
``flock`` on ``RUN_DIR/.lock`` for the run's life; the kernel drops it when the holder dies, so a
killed run never leaves a stale lock. A second writer waits for the first (it then resumes from
the first one's checkpoint) or, given a limit, fails naming the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from disttgl.errors import DataError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "an unknown process"
    except OSError:
        return "an unknown process"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike, *, wait: float | None = None, report_every: float = 60.0
                 ) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) inside the ``with`` block.

    Args:
        run_dir: the run directory.
        wait: seconds to wait for another holder; ``None`` waits as long as it runs (logging who
            holds it every ``report_every`` seconds), 0 fails at once.
        report_every: seconds between the log lines of a waiting run.
    """
    d = Path(run_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise DataError(d, f"cannot create the run directory's lock file ({exc.strerror})") from None
    path = d / LOCK_NAME
    try:
        start, last = time.monotonic(), None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise DataError(d, f"cannot lock the run directory ({exc.strerror})") from None
            now = time.monotonic()
            if wait is not None and now - start >= wait:
                raise DataError(d, f"run directory is in use by {_holder(path)}; wait for it to finish, "
                                   "stop it, or train into another directory")
            if last is None or now - last >= report_every:
                log.warning("%s is in use by %s: waiting for it to finish (then resuming from its checkpoint)",
                            d, _holder(path))
                last = now
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock
