"""A trainer as a torchft replica group of one: its Manager, its fault-tolerant gloo group and one
averaging round (docs/design.md §14.3).

A round: ask the Lighthouse for a quorum of the live trainers (a trainer behind the others, e.g.
restarted, heals first: it receives the last published average from a peer over torchft's
checkpoint transport), SUM-allreduce the round's vector (:mod:`disttgl.tma.averaging`) over the
quorum, and commit only when every participant's allreduce succeeded (``should_commit``). A failed
round (a peer died inside it, the Lighthouse is down) leaves the weights as they were: the trainer
trains on and tries again at its next sync.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torchft import Manager, ProcessGroupGloo

from disttgl.tma.averaging import Contribution, RoundResult, pack, unpack, weight_keys
from disttgl.tma.plan import Timeouts

log = logging.getLogger(__name__)


def replica_name(part: int) -> str:
    """The trainer's replica id prefix; torchft orders a quorum by it, so zero-padded ids put the
    lowest part first (it publishes the round)."""
    return f"trainer{part:04d}"


class Replica:
    """One trainer's end of the averaging.

    Args:
        part: the trainer's part.
        parts: P.
        model: the trainer's model (its state dict is what is averaged).
        lighthouse: the Lighthouse's address.
        timeouts: torchft's timeouts (resolved: :meth:`Timeouts.resolved`).
        on_heal: called after the weights were replaced by a peer's last average (a late joiner).
        store_host: the host name the peers reach this replica's store by (the quorum carries it to them
            for the averaging process group): ``localhost`` on one machine, the node's name under SLURM.
    """

    def __init__(self, part: int, parts: int, model: torch.nn.Module, lighthouse: str, timeouts: Timeouts,
                 on_heal: Callable[[int], None] | None = None, store_host: str = "localhost"):
        self.part, self.parts, self.model, self.on_heal = part, parts, model, on_heal
        self.keys = weight_keys(model.state_dict())
        self.last_average = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.keys}
        self.healed = False
        # the replica group's own store (one rank): the Manager finds its server through it
        self.store = dist.TCPStore(store_host, 0, is_master=True, wait_for_workers=False)
        t = timeouts
        self.pg = ProcessGroupGloo(timeout=timedelta(seconds=t.collective))
        self.manager = Manager(
            pg=self.pg, load_state_dict=self._load, state_dict=self._state, min_replica_size=1,
            use_async_quorum=False,  # heal before the round's allreduce, so a late joiner averages in step
            timeout=timedelta(seconds=t.collective), quorum_timeout=timedelta(seconds=t.quorum),
            connect_timeout=timedelta(seconds=t.connect), rank=0, world_size=1, store_addr=store_host,
            store_port=self.store.port, lighthouse_addr=lighthouse, replica_id=replica_name(part),
            heartbeat_interval=timedelta(seconds=t.heartbeat_interval),
            init_sync=False,  # every trainer builds the same initial weights from the run's seed
            quorum_retries=int(t.quorum_retries or 0))

    # what a late joiner receives: the last published average, not the sender's local weights
    def _state(self) -> dict[str, Any]:
        return {"weights": self.last_average}

    def _load(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        self._assign(weights)
        self.healed = True
        if self.on_heal is not None:
            self.on_heal(self.manager.current_step())

    def _assign(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            own = self.model.state_dict()
            for k in self.keys:
                own[k].copy_(weights[k])
        self.last_average = {k: own[k].detach().clone() for k in self.keys}

    @property
    def round(self) -> int:
        """Rounds committed so far (torchft's step; a healed trainer takes its peers')."""
        return self.manager.current_step()

    def average(self, c: Contribution, in_allreduce: Callable[[], None] | None = None
                ) -> tuple[RoundResult | None, dict[str, Any]]:
        """Run one round; (its result, or None when it failed; facts for the log).

        Args:
            c: this trainer's contribution (``contribute`` is turned off when it heals in this round).
            in_allreduce: called once the allreduce is issued, before it is waited for (the fault hook).
        """
        t0 = time.perf_counter()
        info: dict[str, Any] = {"quorum_s": None, "allreduce_s": None}
        self.healed = False
        try:
            self.manager.start_quorum()
        except Exception as exc:  # noqa: BLE001 - no Lighthouse, no quorum in time: train on, retry later
            info["error"] = f"quorum: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return None, info
        info["quorum_s"] = time.perf_counter() - t0
        if self.healed:  # its own weights were replaced by the last average: nothing of its own to add
            c.contribute = False
        state = self.model.state_dict()
        vec = pack(state, self.keys, self.parts, c)
        t1 = time.perf_counter()
        work = self.manager.allreduce(vec, reduce_op=dist.ReduceOp.SUM)
        if in_allreduce is not None:
            in_allreduce()
        try:
            work.wait()
        except Exception as exc:  # noqa: BLE001 - torchft reports it to should_commit too
            info["error"] = f"allreduce: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        info["allreduce_s"] = time.perf_counter() - t1
        try:
            committed = self.manager.should_commit()
        except Exception as exc:  # noqa: BLE001
            info["error"] = f"commit: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            committed = False
        if not committed:
            why = str(self.manager.errored()).strip().splitlines()
            info.setdefault("error", f"round not committed ({why[0][:200] if why else 'no reason given'})")
            return None, info
        result = unpack(vec, state, self.keys, self.parts)
        if result.mean is not None:
            self._assign(result.mean)
        info["healed"] = self.healed
        return result, info

    def shutdown(self) -> None:
        try:
            self.manager.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
