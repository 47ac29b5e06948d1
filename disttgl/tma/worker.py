"""One TMA trainer process: ``python -m disttgl.tma.worker RUN_DIR PART ATTEMPT`` (docs/design.md §14.3).

It trains its part with the one-process strategy (:class:`~disttgl.train.single.SingleProcess`:
its own node memory, optimizer and batch cache, epoch after epoch) and, between two steps, joins
an averaging round when its sync is due: on the run's common wall-clock ticks (``--sync-every
60s``) or after every n of its own steps (``200steps``). A round's result replaces its weights;
the lowest part in the round publishes it to ``RUN/rounds/``. It stops after the round that first
passes the deadline (or the last of ``--rounds``), and leaves its final weights in
``RUN/trainer-P/final.pt``.

Fault hook (tests): ``DISTTGL_FAULT=PART:STEP[:ROUNDS[:WHERE]]`` makes trainer PART SIGKILL itself
once it has taken STEP steps (and, with ROUNDS, once that many averaging rounds are committed: a
test that checks rounds before the death then does not depend on how fast the machine steps), in
its first attempt only (as :mod:`disttgl.parallel.strategy`'s hook). WHERE is ``step`` (default:
between two steps) or ``allreduce`` (inside its next averaging round, after the quorum formed and
its allreduce was issued: the others' round fails).

A round that fails on a trainer (no quorum, a peer lost in the allreduce, not committed) is logged
in ``trainer-P/failed-ATTEMPT.jsonl`` (when, how long it stalled the trainer, why); the coordinator
puts those lines into ``rounds.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from disttgl.atomic import atomic_path
from disttgl.cache.batch import Batch
from disttgl.cache.loader import BatchLoader
from disttgl.lifetime import exit_with_parent
from disttgl.tma.averaging import Contribution, RoundResult
from disttgl.tma.launcher import Launcher, step_record
from disttgl.tma.plan import TMAPlan, next_tick, read_plan, read_start
from disttgl.tma.replica import Replica
from disttgl.train.config import TrainConfig
from disttgl.train.run_files import write_jsonl
from disttgl.train.single import SingleProcess

log = logging.getLogger(__name__)

FAULT_ENV = "DISTTGL_FAULT"  # "PART:STEP[:ROUNDS[:WHERE]]": that trainer kills itself there (first attempt only)
ROUNDS_DIR = "rounds"


def round_file(run_dir: str | os.PathLike, r: int, part: int) -> Path:
    """Where the lowest part of round ``r`` publishes it (a second file of the same round would be a
    split quorum, e.g. after a Lighthouse restart: both are kept and logged)."""
    return Path(run_dir) / ROUNDS_DIR / f"round-{r:06d}-p{part}.pt"


class SyncedBatches:
    """A split's batches with ``before_step`` called before each: it returns False to end the epoch
    (the run stops), and may average the weights meanwhile (the previous step is complete)."""

    def __init__(self, batches: BatchLoader, before_step: Callable[[Batch], bool]):
        self.batches, self.before_step = batches, before_step

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            if not self.before_step(batch):
                return
            yield batch


class TMATrainer(SingleProcess):
    """The one-process strategy on a part, with the averaging hook between its training steps."""

    def __init__(self, cfg: TrainConfig, before_step: Callable[[Batch], bool]):
        super().__init__(cfg, desc="tma")
        self.before_step = before_step

    def loader(self, split: str, neg_sets: np.ndarray | None = None) -> Any:
        batches = super().loader(split, neg_sets)
        return SyncedBatches(batches, self.before_step) if split == "train" else batches


class Worker:
    """The schedule of one trainer: when to sync, what to contribute, when to stop.

    Args:
        plan: the run's plan.
        part: this trainer's part.
        attempt: 0 for the first start, then 1, 2, ... for restarts (``--restart-dead``).
    """

    def __init__(self, plan: TMAPlan, part: int, attempt: int):
        self.plan, self.part, self.attempt = plan, part, attempt
        self.dir = plan.trainer_dir(part)
        self.t = plan.timeouts
        fault = os.environ.get(FAULT_ENV, "").split(":") if attempt == 0 else [""]
        where = fault[3] if len(fault) > 3 else "step"
        target = tuple(map(int, fault[:3])) if fault[0] else None
        self.die_at = target[1] if target is not None and target[0] == part else None
        self.die_after_rounds = target[2] if target is not None and len(target) > 2 else 0
        self.die_in_allreduce = where == "allreduce"
        self.failures: list[dict[str, Any]] = []
        self.steps = self.events = 0  # in total
        self.since_steps = self.since_events = 0  # since the last committed round
        self.pending: Batch | None = None  # yielded, hence trained once the next one is asked for
        self.stopping = False
        self.t0 = self.deadline = self.next_sync = 0.0
        cfg = TrainConfig(**{**plan.train, "graph": plan.stores[part], "cache": plan.caches[part],
                             "out": str(self.dir), "progress": False})
        self.trainer = TMATrainer(cfg, self.before_step)
        self.replica = Replica(part, plan.parts, self.trainer.model, plan.lighthouse, self.t,
                               store_host=Launcher(plan.launcher).host())
        self.epochs: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ the hook between steps
    def before_step(self, batch: Batch) -> bool:
        if self.pending is not None:
            self.steps += 1
            self.since_steps += 1
            self.events += self.pending.num_events
            self.since_events += self.pending.num_events
        self.pending = batch
        if self._fault_due() and not self.die_in_allreduce:
            self._die("at step")
        if self._due():
            self._sync()
        return not self.stopping

    def _fault_due(self) -> bool:
        return self.die_at is not None and self.steps >= self.die_at and self.replica.round >= self.die_after_rounds

    def _die(self, where: str) -> None:
        log.warning("trainer %d: %s: killing myself %s %d", self.part, FAULT_ENV, where, self.steps)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def _in_allreduce(self) -> None:
        """Called by the replica between issuing its allreduce and waiting for it (the fault hook)."""
        if self.die_in_allreduce and self._fault_due():
            self._die("inside the allreduce after step")

    def _due(self) -> bool:
        now = time.time()
        if now >= self.deadline:
            return True
        if self.plan.sync_kind == "steps":
            return self.since_steps >= self.plan.sync_value
        return now >= self.next_sync

    def _sync(self) -> None:
        now = t_start = time.time()
        last = self.plan.max_rounds > 0 and self.replica.round + 1 >= self.plan.max_rounds
        c = Contribution(part=self.part, contribute=self.since_steps > 0, steps=self.since_steps,
                         events=self.since_events, stop=now >= self.deadline or last)
        result, info = self.replica.average(c, self._in_allreduce)
        now = time.time()
        if result is None:
            log.warning("trainer %d: averaging round failed (%s); training on", self.part, info.get("error"))
            self.failures.append({"kind": "failed_round", "part": self.part, "attempt": self.attempt, "time": now,
                                  "stall_s": now - t_start, "round": self.replica.round + 1, **info})
            write_jsonl(self.dir / f"failed-{self.attempt}.jsonl", self.failures)
            # past the deadline, rounds that keep failing end the run after the longest a round may take
            if now >= self.deadline + self.t.quorum + self.t.collective:
                log.warning("trainer %d: no round since the deadline: stopping with local weights", self.part)
                self.stopping = True
        else:
            self.since_steps = self.since_events = 0
            if result.present and result.present[0] == self.part:
                self._publish(result, info)
            self.stopping = result.stop
        if self.plan.sync_kind == "seconds":
            self.next_sync = next_tick(self.t0, self.plan.sync_value, now)
        elif result is None:
            self.since_steps = 0  # retry after another period, not at every step of an outage

    def _publish(self, result: RoundResult, info: dict[str, Any]) -> None:
        r = self.replica.round
        state = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items() if k in self.replica.keys}
        record = {"round": r, "time": time.time(), "wall_s": time.time() - self.t0, "publisher": self.part,
                  "present": result.present, "contributors": result.contributors,
                  "steps": {str(k): v for k, v in result.steps.items()},
                  "events": {str(k): v for k, v in result.events.items()}, "stop": result.stop,
                  "quorum_s": info.get("quorum_s"), "allreduce_s": info.get("allreduce_s"),
                  "quorum_id": self.replica.manager._quorum_id}  # noqa: SLF001 - torchft exposes no getter
        with atomic_path(round_file(self.plan.run_dir, r, self.part)) as tmp:
            torch.save({"record": json.dumps(record), "weights": state}, tmp)

    # ------------------------------------------------------------------------- the run
    def wait_for_start(self) -> None:
        with atomic_path(self.dir / f"ready-{self.attempt}") as tmp:  # where it runs (host, SLURM step)
            tmp.write_text(json.dumps(step_record()) + "\n")
        t_end = time.time() + self.t.startup
        while (t0 := read_start(self.plan.run_dir)) is None:
            if time.time() > t_end:
                raise TimeoutError(f"trainer {self.part}: no start after {self.t.startup:.0f} s")
            time.sleep(0.05)
        self.t0, self.deadline = t0, t0 + self.plan.time_limit
        now = time.time()
        self.next_sync = next_tick(t0, self.plan.sync_value, now) if self.plan.sync_kind == "seconds" else now

    def run(self) -> None:
        self.wait_for_start()
        log.info("trainer %d (attempt %d): training %s", self.part, self.attempt, self.plan.stores[self.part])
        n = 0
        while not self.stopping:
            n += 1
            result = self.trainer.train_unit(n)
            self.epochs.append({"epoch": n, "train_loss": result.stats.loss, "events": result.stats.events,
                                "seconds": result.stats.seconds, "round": self.replica.round})
            write_jsonl(self.dir / f"epochs-{self.attempt}.jsonl", self.epochs)
        state = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items() if k in self.replica.keys}
        with atomic_path(self.dir / "final.pt") as tmp:
            torch.save({"round": self.replica.round, "attempt": self.attempt, "steps": self.steps,
                        "weights": state}, tmp)
        log.info("trainer %d: done after %d steps, %d rounds", self.part, self.steps, self.replica.round)
        self.replica.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_dir, part, attempt = args[0], int(args[1]), int(args[2])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s trainer {part} %(levelname)s %(name)s: %(message)s")
    for name in ("torchft", "torchft_quorums", "torchft_commits", "torchft_errors"):  # a line per round otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    exit_with_parent()  # the coordinator's death ends its trainers
    plan = read_plan(run_dir)
    plan.trainer_dir(part).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(plan.train.get("threads") or 1))
    Worker(replace(plan), part, attempt).run()
    # everything is on disk (atomically); torchft's threads and servers take seconds to wind down at
    # interpreter exit, and the others would count this trainer alive meanwhile
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
