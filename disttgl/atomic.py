"""Atomic output: write to a temporary name beside the target, rename on success.

A killed or failing job therefore never leaves a file that looks valid at the final path. The
temporary's name holds its writer (``.{name}.{pid}@{host}@{pid namespace}.XXXX.part``), so that the
next write of the same target deletes the temporaries of writers that died (``kill -9``, out of
memory: no ``except`` ran) and keeps those of live ones. An flock on the temporary cannot mark a live
writer instead: HDF5 takes its own exclusive flock on the file it writes, and would fail on ours.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from disttgl.errors import DataError
from disttgl.lifetime import pid_alive

log = logging.getLogger(__name__)


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
    remove_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{writer_tag()}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise DataError(target.parent, f"cannot write in output directory ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only; give it the mode a plain open() would (shared data folders)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, DataError) and exc.errno == errno.ENOSPC:
            # any writer (the graph store, the batch cache, a checkpoint): say what filled up
            raise DataError(None, f"no space left on device writing {target}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _pid_namespace() -> str:
    # containers sharing a volume and a host name still have separate pid spaces
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or "0"
    except OSError:
        return "0"


def writer_tag(pid: int | None = None) -> str:
    """``{pid}@{host}@{pid namespace}``: who writes a temporary, as its name records it."""
    return f"{os.getpid() if pid is None else pid}@{_host()}@{_pid_namespace()}"


_TAG = re.compile(r"^(\d+)@([A-Za-z0-9._-]+)@(\d+)\.[^.]+$")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.part`` temporaries of ``path`` whose writer process is dead on this host.

    Kept: a live writer's, another host's or pid namespace's (cannot tell), and untagged ones written
    before the tag existed (logged, so they can be deleted by hand)."""
    target = Path(path)
    prefix = f".{target.name}."
    here = (_host(), _pid_namespace())
    removed, unknown = [], []
    for tmp in sorted(target.parent.glob(glob.escape(prefix) + "*.part")):
        rest = tmp.name[len(prefix):-len(".part")]
        m = _TAG.match(rest)
        if m is None:
            if re.fullmatch(r"[a-z0-9_]+", rest):  # mkstemp's random part alone: the untagged format
                unknown.append(tmp)
            continue  # else another target's temporary (this name + ".something")
        pid, host, ns = int(m.group(1)), m.group(2), m.group(3)
        if (host, ns) != here or pid_alive(pid):
            continue
        try:
            size = tmp.stat().st_size
            tmp.unlink()
        except FileNotFoundError:
            continue  # another writer cleaned it first
        except OSError as exc:
            log.warning("cannot remove stale temporary %s (%s)", tmp, exc.strerror)
            continue
        log.info("removed %s (%.1f MiB) left by dead writer %d", tmp, size / 2**20, pid)
        removed.append(tmp)
    for tmp in unknown:
        log.warning("%s: temporary of unknown writer (older disttgl?); delete it by hand if nothing writes %s",
                    tmp, target.name)
    return removed
