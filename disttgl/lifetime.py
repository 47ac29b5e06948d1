"""Processes that must not outlive the process that started them.

torchrun starts each rank in a process session of its own, and a rank starts its copy's memory
server; when torchrun (or the rank) is killed with SIGKILL nothing tells them, and they would go
on writing into a run directory that a rerun is using. ``exit_with_parent`` asks the kernel for a
signal when the parent dies (Linux ``PR_SET_PDEATHSIG``); elsewhere a thread watches ``getppid()``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _prctl_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_with_parent(sig: int = signal.SIGTERM, *, poll: float = 1.0) -> None:
    """Have ``sig`` delivered to this process as soon as its parent process exits.

    Args:
        sig: the signal to receive (SIGTERM lets the process clean up: handlers and ``finally``
            blocks run; its default action still ends the process).
        poll: seconds between checks of the watching thread where prctl is not available.
    """
    parent = os.getppid()
    if not _prctl_pdeathsig(sig):
        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(poll)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="disttgl-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died between reading its pid and the prctl
        os.kill(os.getpid(), sig)


def child_exits_with_parent() -> None:
    """``preexec_fn`` for a child that must die with the process starting it (Linux only; a no-op
    elsewhere). Runs between fork and exec, so it only calls prctl."""
    _prctl_pdeathsig(signal.SIGTERM)


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3 on (state first) of ``/proc/PID/stat``; None where it cannot be read (no such
    process, or no /proc). The command name before them may hold spaces, so split after its ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; a zombie (killed, not yet reaped) is dead, another
    user's process counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")
