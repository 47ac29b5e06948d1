"""The Lighthouse as a process of its own: ``python -m disttgl.tma.lighthouse PORT JOIN_MS HEARTBEAT_MS``
(docs/design.md §14.3). A process, not a thread of the coordinator, so that it can die and be
restarted on the same port while the trainers train on (the coordinator restarts it).

It forms each round's quorum: the trainers that asked, once every trainer heartbeating within the
heartbeat timeout has asked or the join timeout has passed since the first asked (torchft's rule,
which also needs more than half of the heartbeating trainers: no split brain).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from disttgl.lifetime import child_exits_with_parent, exit_with_parent

QUORUM_TICK_MS = 50  # how often it re-checks a waiting quorum (torchft's default is 100)


def free_port() -> int:
    """A TCP port free on this machine now (the Lighthouse keeps it across restarts)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def start(port: int, join_s: float, heartbeat_s: float, log_path: str | Path) -> subprocess.Popen:
    """Start the Lighthouse process on ``port``; it ends with the process that started it.

    Args:
        port: the TCP port (the trainers' ``lighthouse`` address is ``http://HOST:port``).
        join_s: join timeout (seconds).
        heartbeat_s: heartbeat timeout (seconds).
        log_path: its stdout and stderr (appended: a restart adds to the same log).
    """
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "disttgl.tma.lighthouse", str(port),
                                 str(int(join_s * 1000)), str(int(heartbeat_s * 1000))],
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_exits_with_parent)
    finally:
        log.close()


def main(argv: list[str] | None = None) -> int:
    from torchft.coordination import LighthouseServer  # the Lighthouse process alone needs the server

    port, join_ms, heartbeat_ms = (int(a) for a in (sys.argv[1:] if argv is None else argv))
    exit_with_parent()
    server = LighthouseServer(bind=f"[::]:{port}", min_replicas=1, join_timeout_ms=join_ms,
                              quorum_tick_ms=QUORUM_TICK_MS, heartbeat_timeout_ms=heartbeat_ms)
    print(f"lighthouse listening on port {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1.0):  # a timed wait, so the SIGTERM handler runs promptly
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
