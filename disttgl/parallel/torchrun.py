"""What torchrun gives each i x j x k rank: its place (:class:`Env`), the layout, the process group,
and the names of dead peers.

Failures: every blocking wait has a timeout (``--timeout``, also the process group's); a rank that
dies closes its sockets, so the others fail at once in the next collective or server call and
exit non-zero naming the dead rank (found from PIDs on this machine, heartbeats elsewhere).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch.distributed as dist

from disttgl.errors import DataError
from disttgl.lifetime import pid_alive
from disttgl.layout import Layout, parse_parallelism
from disttgl.parallel.schedule import choose_parallelism

log = logging.getLogger(__name__)


class PeerFailure(RuntimeError):
    pass


@dataclass(frozen=True)
class Env:
    """What torchrun tells each worker."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    nodes: int
    restart: int
    run_id: str

    @classmethod
    def from_environ(cls) -> "Env":
        e = os.environ
        if "RANK" not in e or "WORLD_SIZE" not in e:
            raise DataError(None, "--parallelism other than 1x1x1 needs torchrun: torchrun --nproc-per-node W "
                                  "-m disttgl.train GRAPH CACHE --out DIR --parallelism IxJxK")
        world, local_world = int(e["WORLD_SIZE"]), int(e.get("LOCAL_WORLD_SIZE", e["WORLD_SIZE"]))
        return cls(rank=int(e["RANK"]), world=world, local_rank=int(e.get("LOCAL_RANK", 0)), local_world=local_world,
                   nodes=int(e.get("GROUP_WORLD_SIZE", max(1, world // local_world))),
                   restart=int(e.get("TORCHELASTIC_RESTART_COUNT", 0)), run_id=e.get("TORCHELASTIC_RUN_ID", "none"))


def resolve_layout(spec: str, env: Env, epochs: int, cache_i: int) -> Layout:
    """The layout of ``--parallelism spec`` (``auto``: chosen from the ranks torchrun started),
    checked against those ranks and the batch cache's i."""
    lay = parse_parallelism(spec)
    if lay is None:
        try:
            lay, why = choose_parallelism(env.nodes, env.local_world, epochs, cache_i=cache_i)
        except ValueError as exc:
            raise DataError(None, f"--parallelism auto: {exc}") from None
        if env.rank == 0:
            log.info("parallelism auto -> %s: %s", lay, why)
    if lay.world != env.world:
        raise DataError(None, f"--parallelism {lay} needs {lay.world} ranks, torchrun started {env.world}")
    if lay.i != cache_i:
        raise DataError(None, f"--parallelism {lay} has i = {lay.i} but the batch cache was built with i = "
                              f"{cache_i}; build it with --minibatch-parallelism {lay.i}")
    return lay


# -------------------------------------------------------------------------------- liveness

class Liveness:
    """Names dead ranks: each rank publishes host and PID and a heartbeat in the rendezvous store."""

    def __init__(self, env: Env, interval: float = 1.0):
        self.env, self.interval = env, interval
        self.prefix = f"disttgl/{env.run_id}/{env.restart}"
        self.host = socket.gethostname()
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=timedelta(seconds=30))
        self.store.set(f"{self.prefix}/host/{env.rank}", f"{self.host} {os.getpid()}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="disttgl-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            try:
                self.store.set(f"{self.prefix}/hb/{self.env.rank}", str(n))
            except Exception:  # noqa: BLE001 - the store going away ends the heartbeat, nothing else
                return

    def stop(self) -> None:
        self._stop.set()

    def _get(self, key: str) -> str | None:
        try:
            return self.store.get(key).decode() if self.store.check([key]) else None
        except Exception:  # noqa: BLE001
            return None

    def dead_ranks(self) -> list[int]:
        """Ranks whose process is gone (same machine) or whose heartbeat stopped (elsewhere)."""
        others = [r for r in range(self.env.world) if r != self.env.rank]
        dead, remote = [], []
        for r in others:
            info = self._get(f"{self.prefix}/host/{r}")
            if info is None:
                remote.append(r)
                continue
            host, pid = info.split()
            if host == self.host:
                if not pid_alive(int(pid)):
                    dead.append(r)
            else:
                remote.append(r)
        if dead or not remote:
            return dead
        before = {r: self._get(f"{self.prefix}/hb/{r}") for r in remote}
        time.sleep(4 * self.interval)
        return [r for r in remote if self._get(f"{self.prefix}/hb/{r}") == before[r]]


@contextlib.contextmanager
def process_group(env: Env, backend: str, timeout: float) -> Iterator[None]:
    """The process group for the run's body; a failure in it (other than this rank's own
    :class:`DataError`) becomes a :class:`PeerFailure` naming the dead ranks, if any."""
    # A store namespace per restart round: keys a failed round left behind (gloo's peer addresses)
    # must not reach the next one, or it connects to dead ranks.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.world,
                         is_master=env.rank == 0 and not agent_store, timeout=timedelta(seconds=timeout))
    dist.init_process_group(backend, store=dist.PrefixStore(f"disttgl/{env.run_id}/{env.restart}/pg", base),
                            rank=env.rank, world_size=env.world, timeout=timedelta(seconds=timeout))
    live = Liveness(env)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    except DataError:
        raise  # this rank's own finding (a NaN loss, a bad file): the CLI names it, exit 2
    except (Exception, KeyboardInterrupt) as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the report; torchrun SIGKILLs after its grace
        dead = live.dead_ranks()
        who = f"rank(s) {', '.join(map(str, dead))} died" if dead else "no dead rank found"
        raise PeerFailure(f"rank {env.rank}: training stopped ({who}): {type(exc).__name__}: {exc}") from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        live.stop()
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("terminated by SIGTERM (torchrun stops the others when a rank fails)")
