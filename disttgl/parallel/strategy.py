"""DistTGL's i x j x k training as a strategy of the one loop (:func:`disttgl.train.fit.fit`).

``torchrun --nproc-per-node W -m disttgl.train GRAPH CACHE --out DIR --parallelism IxJxK``
(docs/design.md §5). Every rank follows the pure schedule (:mod:`disttgl.parallel.schedule`); each
memory copy has a local memory server (:mod:`disttgl.parallel.memory_server`) started by its first
rank. The training step is the single-process one (:func:`disttgl.train.epoch.train_epoch`): this
strategy feeds it the scheduled batches, the served memory (:mod:`disttgl.parallel.served_memory`)
and an optimizer that all-reduces gradients over all W ranks before every step (lr = base·W,
:mod:`disttgl.parallel.gradients`).

After every pass (T iterations, j·k epochs' worth of batches) each copy's leader flushes its server
and saves the copy's memory (for resume); rank 0 evaluates val (and test when val MRR improves)
with copy 0's memory, in batches of B as one process does, and writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from disttgl.atomic import atomic_path
from disttgl.cache.batch import Batch
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.errors import DataError
from disttgl.lifetime import exit_with_parent
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN
from disttgl.parallel.gradients import AllReduceOptimizer
from disttgl.parallel.memory_server import MemoryClient, MemoryServerError, ServerPlan, start_server
from disttgl.parallel.schedule import Layout, Step, memory_batches, passes, step
from disttgl.parallel.served_memory import Hold, ServedMemory, buffer_capacity, table_state
from disttgl.parallel.staleness import served_staleness
from disttgl.parallel.torchrun import Env, PeerFailure, process_group, resolve_layout
from disttgl.runtime import keep_freed_memory
from disttgl.train.config import TrainConfig, resolve_lr
from disttgl.train.epoch import adam, load_features, model_config, train_epoch
from disttgl.train.fit import UnitResult, fit
from disttgl.train.machine_load import Interval, others_busy, process_cpu_seconds
from disttgl.train.rng import seed_everything
from disttgl.train.run_lock import run_dir_lock
from disttgl.train.task import make_task

log = logging.getLogger(__name__)

FAULT_ENV = "DISTTGL_FAULT"  # "RANK:ITERATION": that rank kills itself there (first attempt only; tests)


def train_parallel(cfg: TrainConfig) -> int:
    """Run this rank's part of an i x j x k training (rank 0 writes the run directory); the exit
    status: 0, or 1 when a peer failed (the message names it)."""
    # the memory server holds memory‖mail, not APAN's mailbox; JODIE would fit it but is not tested here
    if cfg.memory != "gru":
        raise DataError(None, f"--memory {cfg.memory} trains in one process only: the i x j x k trainers "
                              f"(--parallelism {cfg.parallelism}) support --memory gru")
    env = Env.from_environ()
    exit_with_parent()  # torchrun runs each rank in its own session: when it is killed, so are we
    keep_freed_memory()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:  # share this machine's cores between its trainers
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
    with open_cache(cfg.cache, graph_path=cfg.graph) as cache:
        cache_i = cache.meta.minibatch_parallelism
    layout = resolve_layout(cfg.parallelism, env, cfg.epochs, cache_i)
    if cfg.device.startswith("cuda"):
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        # NCCL needs one GPU per rank; several trainers sharing a GPU all-reduce through gloo
        backend = "nccl" if env.local_world <= torch.cuda.device_count() else "gloo"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # rank 0 owns the run directory's files: no second run may write there meanwhile (the others
    # wait for it in the rendezvous below, so its wait is bounded by the same timeout)
    lock = run_dir_lock(cfg.out, wait=0.8 * cfg.timeout) if env.rank == 0 else contextlib.nullcontext()
    try:
        with lock, process_group(env, backend, cfg.timeout):
            fit(ScheduledRanks(cfg, env, layout, device))
    except PeerFailure as exc:
        print(f"disttgl train: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


class ScheduledRanks:
    """One rank of an i x j x k training: the model, the all-reducing optimizer, the schedule's
    batches and the copy's served memory.

    Args:
        cfg: the run's settings (``cfg.parallelism`` resolved to ``layout``).
        env: this rank's place, from torchrun.
        layout: the i x j x k layout.
        device: this rank's device.
    """

    unit = "pass"

    def __init__(self, cfg: TrainConfig, env: Env, layout: Layout, device: torch.device):
        self.cfg, self.env, self.lay, self.device = cfg, env, layout, device
        # MSPipe's k between the copy's memory batches (§5.7); a bad value fails before any loading
        self.staleness = served_staleness(cfg.staleness, cfg.stage_times, cfg.mitigation, cfg.pipeline, str(layout))
        self.rng = seed_everything(cfg.seed)
        self.feats, graph = load_features(cfg.graph, device, cfg.static)
        with open_cache(cfg.cache, graph_path=cfg.graph, minibatch_parallelism=layout.i) as cache:
            self.meta = cache.meta
            self.nb = {s: cache.num_batches(s) for s in ("train", "val", "test")}
            self.num_sets = cache.num_neg_sets("train")
        if self.nb["train"] == 0:
            raise DataError(cfg.cache, "the train split has no batches")
        self.num_nodes = graph.num_nodes
        self.T = memory_batches(self.nb["train"], layout.i)
        self.units = passes(cfg.epochs, layout.j, layout.k)
        # edge classification: the same schedule and memory; batches read without negatives (§13)
        self.task = make_task(cfg.task, cfg.loss, graph.label, graph.split, device, cfg.graph)
        self.model = TGN(model_config(cfg, graph, self.feats, classes=self.task.num_classes)).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        for p in self.params:  # identical start everywhere (seeded already; cheap insurance)
            dist.broadcast(p.data, 0)
        self.it = 0  # current global iteration
        self.resume_it = 0
        # DistTGL's rule: W ranks step on W batches' mean gradient, so the step grows with W
        self.lr = resolve_lr(cfg, self.nb["train"], quiet=env.rank != 0) * layout.world
        self.optimizer = AllReduceOptimizer(adam(self.params, self.lr), self.params,
                                            lambda: self.active(self.it))
        self.copy = layout.copy(env.rank)
        self.leader = env.rank == self.copy * layout.i * layout.j
        self.evaluates = env.rank == 0
        self.config_record = asdict(cfg) | {"parallelism": str(layout), "world_size": layout.world,
                                            "static_memory": cfg.static is not None,
                                            "mspipe_k": self.staleness.k, "group_staleness": layout.i - 1}
        if cfg.pipelined and env.rank == 0:
            log.info("staleness k = %d (%s) between memory batches; within one, i - 1 = %d", self.staleness.k,
                     self.staleness.reason, layout.i - 1)
        self.server = self.client = self.memory = self.holds = None
        self.table: np.ndarray | None = None  # copy's memory after the last pass (leaders)

    # ------------------------------------------------------------------------- the schedule
    def step_of(self, rank: int, t: int) -> Step | None:
        s = step(self.T, self.lay, rank, t, num_batches=self.nb["train"], num_sets=self.num_sets, seed=self.cfg.seed)
        if s is not None and s.repeat and s.stream < self.resume_it:
            return None  # a hold begun before a restart: its memory read is lost, so it idles
        return s

    def active(self, t: int) -> int:
        return sum(self.step_of(r, t) is not None for r in range(self.lay.world))

    def _holds(self, start: int, end: int) -> Iterator[Hold]:
        """This rank's holds (first iterations in [start, end)), batches read ahead by a loader."""
        firsts = [(t, s) for t in range(start, end) if (s := self.step_of(self.env.rank, t)) is not None
                  and s.repeat == 0]
        items = []
        for t, s in firsts:
            for q in range(self.lay.j):
                nxt = self.step_of(self.env.rank, t + q) if t + q < end else None
                items.append((s.sub, nxt.neg_set if nxt is not None and nxt.stream == s.stream else s.neg_set))
        loader = BatchLoader(self.cfg.cache, "train", items, prefetch=self.cfg.prefetch * self.lay.j,
                             device=self.device, negatives=self.task.negatives)
        it = iter(loader)
        for t, s in firsts:
            yield Hold(s.stream, [next(it) for _ in range(self.lay.j)])

    def _pass_batches(self, p: int) -> Iterator[Batch]:
        fault = os.environ.get(FAULT_ENV, "")
        die = tuple(map(int, fault.split(":"))) if fault and self.env.restart == 0 else None
        memory = self.memory
        for t in range(p * self.T, (p + 1) * self.T):
            self.it = t
            if die == (self.env.rank, t):
                log.warning("rank %d: %s: killing myself at iteration %d", self.env.rank, FAULT_ENV, t)
                os.kill(os.getpid(), signal.SIGKILL)
            s = self.step_of(self.env.rank, t)
            if s is None:
                self.optimizer.idle_step()
                continue
            if s.repeat == 0:
                memory.hold = next(self.holds)
                assert memory.hold.stream == s.stream
            memory.step = s
            yield memory.hold.batches[s.repeat]

    def memory_file(self, copy: int, done: int) -> Path:
        return Path(self.cfg.out) / f"memory-copy{copy}-pass{done}.npy"

    def clock_file(self, copy: int, done: int) -> Path | None:
        """k > 1 reads the server's clock, so a resume needs it (k = 1 reads the cache's)."""
        return Path(self.cfg.out) / f"memory-copy{copy}-pass{done}-clock.npy" if self.staleness.k > 1 else None

    # ------------------------------------------------------------------------ the strategy
    def checkpoint_changes(self, ckpt: dict[str, Any]) -> list[str]:
        # a checkpoint of another layout or staleness is not continued
        changes = [] if ckpt.get("parallelism") == str(self.lay) else ["parallelism"]
        return changes + ([] if ckpt.get("mspipe_k", 1) == self.staleness.k else ["staleness"])

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.resume_it = int(ckpt["epoch"]) * self.T  # the memory is in the copies' files

    def state(self) -> dict[str, Any]:
        return {"parallelism": str(self.lay), "mspipe_k": self.staleness.k}

    def begin(self, done: int) -> None:
        """Start (leader) or find the copy's memory server; every rank's hold reader."""
        env, lay, cfg = self.env, self.lay, self.cfg
        if env.rank == 0:
            log.info("%s on %d ranks: T = %d memory batches, %d passes (%d epochs requested), lr %.2g",
                     lay, lay.world, self.T, self.units, cfg.epochs, self.lr)
        store = dist.distributed_c10d._get_default_store()
        key = f"disttgl/{env.run_id}/{env.restart}/server/{self.copy}"
        state = self.memory_file(self.copy, done) if done else None
        clock = self.clock_file(self.copy, done) if done else None
        for f in (state, clock):
            if f is not None and not f.exists():
                raise DataError(f, "memory of this copy for the checkpoint is missing; cannot resume")
        if self.leader:
            plan = ServerPlan(T=self.T, i=lay.i, j=lay.j, k=lay.k, copy=self.copy, num_batches=self.nb["train"],
                              num_nodes=self.num_nodes, dim=cfg.dim, start=done * self.T, end=self.units * self.T,
                              capacity=buffer_capacity(self.meta, lay.j, self.num_nodes), timeout=cfg.timeout,
                              state=None if state is None else str(state), staleness=self.staleness.k,
                              num_events=int(self.feats.edge_feat.shape[0]) - 1,  # its zero row E: no mail
                              clock_state=None if clock is None else str(clock))
            self.server, address, authkey = start_server(plan)
            store.set(key, json.dumps({"address": address, "authkey": authkey.hex(), "capacity": plan.capacity}))
        store.wait([key], timedelta(seconds=cfg.timeout))
        info = json.loads(store.get(key))
        self.client = MemoryClient(info["address"], bytes.fromhex(info["authkey"]), env.rank, info["capacity"],
                                   timeout=cfg.timeout, server=self.server)
        self.memory = ServedMemory(self.client, cfg.dim, self.device, self.staleness.k)
        self.holds = self._holds(done * self.T, self.units * self.T)

    def train_unit(self, n: int) -> UnitResult:
        p, lay = n - 1, self.lay
        t0 = time.perf_counter()
        load = Interval().start()
        server_cpu = process_cpu_seconds(self.server.pid) if self.server is not None else None
        with tqdm(total=None, unit="ev", unit_scale=True, desc=f"train {lay} pass {n}",
                  disable=not self.cfg.progress or self.env.rank != 0, mininterval=2.0) as bar:
            stats = train_epoch(self.model, self.memory, self._pass_batches(p), self.optimizer,
                                self.feats, loss=self.cfg.loss, task=self.task, progress=bar, epoch=n,
                                precision=self.cfg.precision)
        train_s = time.perf_counter() - t0
        fields = load.stop()
        if server_cpu is not None:  # our own memory server is not another process's load
            fields["own_cpu_s"] += (process_cpu_seconds(self.server.pid) or server_cpu) - server_cpu
        rates = [None] * lay.world
        dist.all_gather_object(rates, (stats.events, train_s, stats.loss, fields, socket.gethostname()))
        if self.leader:
            clock_file = self.clock_file(self.copy, n)
            if clock_file is None:
                self.table = self.client.flush(n * self.T - 1)
            else:
                self.table, clock = self.client.flush(n * self.T - 1, clock=True)
                with atomic_path(clock_file) as tmp, open(tmp, "wb") as f:
                    np.save(f, clock)
            with atomic_path(self.memory_file(self.copy, n)) as tmp, open(tmp, "wb") as f:
                np.save(f, self.table)
        events, wall = sum(r[0] for r in rates), max(r[1] for r in rates)
        row = {"epochs_trained": n * lay.j * lay.k, "train_loss": float(np.mean([r[2] for r in rates])),
               "train_events_per_s": events / wall if wall > 0 else 0.0,
               "rank_events_per_s": [r[0] / r[1] if r[1] > 0 else 0.0 for r in rates]}
        if self.cfg.pipelined:
            st = self.staleness.record(lay, self.T)
            row |= {"staleness_k": st["k"], "mean_staleness": st["mean_staleness"]}
        return UnitResult(stats, row, rank_load(rates))

    def eval_memory(self) -> NodeMemory:
        return table_state(self.table, self.cfg.dim, self.device)  # copy 0's, carried on from training

    def loader(self, split: str) -> BatchLoader:
        # batches of B as one process evaluates (the cache never groups val/test by i)
        return BatchLoader(self.cfg.cache, split, [(b, 0) for b in range(self.nb[split])], prefetch=self.cfg.prefetch,
                           device=self.device, negatives=self.task.negatives)

    def sync(self) -> None:
        dist.barrier()  # every copy's memory is on disk before the checkpoint names it

    def unit_saved(self, n: int) -> None:
        if self.leader and n > 2:  # checkpoint n - 1 (written before this pass's barrier) no longer needs it
            self.memory_file(self.copy, n - 2).unlink(missing_ok=True)
            if (clock := self.clock_file(self.copy, n - 2)) is not None:
                clock.unlink(missing_ok=True)

    def finish(self) -> None:
        """After the last pass: the memory server exited cleanly, every rank is done."""
        self.close()
        if self.server is not None and self.server.returncode not in (0, None):
            raise MemoryServerError(f"memory server of copy {self.copy} exited with code {self.server.returncode}")
        dist.barrier()

    def close(self) -> None:
        if self.holds is not None:
            self.holds.close()
        if self.client is not None:
            self.client.close()
        if self.server is not None and self.server.returncode is None:
            try:
                self.server.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.server.kill()
        self.holds = self.client = None

    def summary_fields(self, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        lay = self.lay
        per_rank = np.mean([r["rank_events_per_s"] for r in history], axis=0).tolist() if history else []
        # best_epoch counts passes here (each j·k epochs' worth of batches)
        return {"best_unit": "pass", "best_epochs_trained": best["best_epoch"] * lay.j * lay.k,
                "epochs_trained": len(history) * lay.j * lay.k, "rank_events_per_s": per_rank,
                "parallelism": str(lay), "world_size": lay.world, "batch_size": int(self.meta.batch_size)} \
            | ({"staleness": self.staleness.record(lay, self.T)} if self.cfg.pipelined else {})


def rank_load(rates: list) -> dict[str, Any]:
    """The row's machine-load fields from every rank's pass measurement: sibling ranks on a machine
    are this run, not other load, so per machine the others' share is the machine's busy CPU time
    (one rank's view: they share the cores) minus all its ranks' own, over the pass's wall time."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for r in rates:
        by_host.setdefault(r[4], []).append(r[3])
    here = by_host[rates[0][4]]
    others = [others_busy(max(f["busy_cpu_s"] for f in fs) if all(f["busy_cpu_s"] is not None for f in fs)
                          else None, sum(f["own_cpu_s"] for f in fs), max(f["wall_s"] for f in fs))
              for fs in by_host.values()]
    wall = max(f["wall_s"] for f in here)
    return {"load_avg": here[0]["load_avg"], "cpu_count": here[0]["cpu_count"],
            "threads": sum(f["threads"] for f in here),
            "own_cores_busy": sum(f["own_cpu_s"] for f in here) / wall if wall > 0 else 0.0,
            "other_cores_busy": None if any(o is None for o in others) else max(others)}
