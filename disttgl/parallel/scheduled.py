"""Distributed i x j x k training (docs/design.md §5): one process per trainer, launched by torchrun.

``torchrun --nproc-per-node W -m disttgl.train GRAPH CACHE --out DIR --parallelism IxJxK``.
Every rank follows the pure schedule (:mod:`disttgl.parallel.schedule`); each memory copy has a local
memory server (:mod:`disttgl.parallel.memory_server`) started by its first rank. The training step itself is
the single-process one (:func:`disttgl.train.fit.train_epoch`): this module only feeds it the
scheduled batches, a memory adapter that reads and writes through the server, and an optimizer
wrapper that all-reduces gradients over all W ranks before every step (lr = base·W). Idle ranks
(warm-up, a short last memory batch) join the all-reduce with zero gradients and take the same
step, so weights stay identical everywhere; the mean is over the ranks active in that iteration.

After every pass (T iterations, j·k epochs' worth of batches) each copy's leader flushes its server
and saves the copy's memory (for resume); rank 0 evaluates val (and test when val MRR improves)
with copy 0's memory and writes ``metrics.jsonl``, ``checkpoint.pt`` and ``summary.json`` as the
single-process path does, plus the layout and per-rank throughput.

Failures: every blocking wait has a timeout (``--timeout``, also the process group's); a rank that
dies closes its sockets, so the others fail at once in the next collective or server call and
exit non-zero naming the dead rank (found from PIDs on this machine, heartbeats elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from disttgl.atomic import atomic_path
from disttgl.cache.batch import Batch
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.errors import DataError
from disttgl.lifetime import exit_with_parent, pid_alive
from disttgl.train.machine_load import Interval, others_busy, process_cpu_seconds
from disttgl.models.memory import MemoryState, write_rows
from disttgl.parallel.memory_server import MemoryClient, MemoryServerError, ServerPlan, start_server
from disttgl.models.tgn import TGN
from disttgl.train.run_lock import run_dir_lock
from disttgl.runtime import keep_freed_memory
from disttgl.parallel.schedule import Layout, Step, choose_parallelism, memory_batches, passes, step
from disttgl.train.fit import (TrainConfig, adam, evaluate, improves, load_features, model_config, resolve_lr,
                              resumable_checkpoint, run_summary, save_checkpoint, seed_everything, train_epoch,
                              write_jsonl, write_summary)

log = logging.getLogger(__name__)

FAULT_ENV = "DISTTGL_FAULT"  # "RANK:ITERATION": that rank kills itself there (first attempt only; tests)


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
    if spec.strip().lower() == "auto":
        try:
            lay, why = choose_parallelism(env.nodes, env.local_world, epochs, cache_i=cache_i)
        except ValueError as exc:
            raise DataError(None, f"--parallelism auto: {exc}") from None
        if env.rank == 0:
            log.info("parallelism auto -> %s: %s", lay, why)
    else:
        try:
            lay = Layout.parse(spec)
        except ValueError as exc:
            raise DataError(None, f"--parallelism: {exc}") from None
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


# ---------------------------------------------------------------------- gradients and memory

class AllReduceOptimizer:
    """Wraps an optimizer: ``step`` first averages gradients over all ranks (one flat all-reduce),
    dividing by the number of ranks active in the current iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], active: Any):
        self.optimizer, self.params, self.active = optimizer, params, active

    @property
    def param_groups(self):  # noqa: ANN201
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        allreduce_grads(self.params, self.active())
        self.optimizer.step()

    def idle_step(self) -> None:
        """An iteration without a batch: contribute zeros, take the same step as everyone."""
        self.optimizer.zero_grad(set_to_none=True)
        self.step()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def allreduce_grads(params: list[torch.nn.Parameter], active: int) -> None:
    """grad <- (sum over ranks of grad) / active, for every parameter (missing grads count as zero)."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= max(active, 1)
    off = 0
    for p in params:
        n = p.numel()
        p.grad = flat[off:off + n].view_as(p).clone()
        off += n


@dataclass
class Hold:
    """One memory batch held for j iterations: its j batches (one per negative set) and, once read,
    the memory rows of the union of their nodes."""

    stream: int
    batches: list[Batch]
    nodes: torch.Tensor | None = None  # sorted unique node ids
    rows: torch.Tensor | None = None  # [n, 3d] memory‖mail


class ServedMemory:
    """The ``gather``/``write``/``reset`` interface of :class:`MemoryState`, backed by the copy's
    memory server and the schedule: the first iteration of a hold reads the memory of all its
    batches' nodes at once; repeats reuse those rows; only the first iteration writes."""

    def __init__(self, client: MemoryClient, dim: int, device: torch.device):
        self.client, self.dim, self.device = client, dim, device
        self.hold: Hold | None = None
        self.step: Step | None = None

    def reset(self) -> None:  # the server resets on wraps; nothing for a trainer to do
        pass

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hold
        if h.rows is None:
            nodes = torch.unique(torch.cat([b.nodes.cpu() for b in h.batches]))
            h.nodes = nodes.to(self.device)
            h.rows = torch.from_numpy(self.client.read(h.stream, nodes.numpy())).to(self.device)
        rows = h.rows.index_select(0, torch.searchsorted(h.nodes, batch.nodes))
        return rows[:, :self.dim], rows[:, self.dim:]

    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        if self.step is None or not self.step.writes:
            return
        nodes, mem, mail = write_rows(batch, new_memory)
        self.client.write(self.step.stream, nodes.cpu().numpy(), torch.cat([mem, mail], 1).cpu().numpy())


def table_state(table: np.ndarray, dim: int, device: torch.device) -> MemoryState:
    t = torch.from_numpy(np.ascontiguousarray(table))
    return MemoryState(t[:, :dim].contiguous().to(device), t[:, dim:].contiguous().to(device))


def buffer_capacity(meta: Any, j: int, num_nodes: int) -> int:
    """Rows a trainer ever reads at once: a hold's roots (2B positives, j·B negatives) and their
    sampled neighbours, bounded by N."""
    return max(1, min(num_nodes, meta.batch_size * (2 + j) * (1 + meta.neighbors)))


# ------------------------------------------------------------------------------------ trainer

class _Trainer:
    def __init__(self, cfg: TrainConfig, env: Env, layout: Layout, timeout: float, device: torch.device):
        self.cfg, self.env, self.lay, self.timeout, self.device = cfg, env, layout, timeout, device
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
        self.passes = passes(cfg.epochs, layout.j, layout.k)
        self.model = TGN(model_config(cfg, graph, self.feats)).to(device)
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

    def step_of(self, rank: int, t: int) -> Step | None:
        s = step(self.T, self.lay, rank, t, num_batches=self.nb["train"], num_sets=self.num_sets, seed=self.cfg.seed)
        if s is not None and s.repeat and s.stream < self.resume_it:
            return None  # a hold begun before a restart: its memory read is lost, so it idles
        return s

    def active(self, t: int) -> int:
        return sum(self.step_of(r, t) is not None for r in range(self.lay.world))

    def holds(self, start: int, end: int) -> Iterator[Hold]:
        """This rank's holds (first iterations in [start, end)), batches read ahead by a loader."""
        firsts = [(t, s) for t in range(start, end) if (s := self.step_of(self.env.rank, t)) is not None
                  and s.repeat == 0]
        items = []
        for t, s in firsts:
            for q in range(self.lay.j):
                nxt = self.step_of(self.env.rank, t + q) if t + q < end else None
                items.append((s.sub, nxt.neg_set if nxt is not None and nxt.stream == s.stream else s.neg_set))
        loader = BatchLoader(self.cfg.cache, "train", items, prefetch=self.cfg.prefetch * self.lay.j,
                             device=self.device)
        it = iter(loader)
        for t, s in firsts:
            yield Hold(s.stream, [next(it) for _ in range(self.lay.j)])

    def pass_batches(self, p: int, holds: Iterator[Hold], memory: ServedMemory) -> Iterator[Batch]:
        fault = os.environ.get(FAULT_ENV, "")
        die = tuple(map(int, fault.split(":"))) if fault and self.env.restart == 0 else None
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
                memory.hold = next(holds)
                assert memory.hold.stream == s.stream
            memory.step = s
            yield memory.hold.batches[s.repeat]

    def memory_file(self, copy: int, done: int) -> Path:
        return Path(self.cfg.out) / f"memory-copy{copy}-pass{done}.npy"


def train_parallel(cfg: TrainConfig, *, timeout: float = 300.0) -> dict[str, Any] | None:
    """Run this rank's part of an i x j x k training; rank 0 returns the summary, others None."""
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
        if not torch.cuda.is_available():
            raise DataError(None, f"--device {cfg.device}: CUDA is not available on this machine")
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        # NCCL needs one GPU per rank; several trainers sharing a GPU all-reduce through gloo
        backend = "nccl" if env.local_world <= torch.cuda.device_count() else "gloo"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # rank 0 owns the run directory's files: no second run may write there meanwhile (the others
    # wait for it in the rendezvous below, so its wait is bounded by the same timeout)
    lock = run_dir_lock(cfg.out, wait=0.8 * timeout) if env.rank == 0 else contextlib.nullcontext()
    with lock:
        return _train_parallel(cfg, env, layout, device, backend, timeout)


def _train_parallel(cfg: TrainConfig, env: Env, layout: Layout, device: torch.device, backend: str,
                    timeout: float) -> dict[str, Any] | None:
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
        return _run(cfg, env, layout, timeout, device)
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


def _run(cfg: TrainConfig, env: Env, layout: Layout, timeout: float, device: torch.device) -> dict[str, Any] | None:
    tr = _Trainer(cfg, env, layout, timeout, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"best_epoch": 0, "val_mrr": -math.inf}
    done = 0
    # as the single-process path does: a checkpoint of other settings (or layout) is not continued
    ckpt = resumable_checkpoint(ckpt_path, cfg,
                                lambda c: [] if c.get("parallelism") == str(layout) else ["parallelism"],
                                quiet=env.rank != 0)
    if ckpt is not None:
        tr.model.load_state_dict(ckpt["model"])
        tr.optimizer.load_state_dict(ckpt["optimizer"])
        history, best, done = ckpt["history"], ckpt["best"], ckpt["epoch"]
        tr.resume_it = done * tr.T
        if env.rank == 0:
            log.info("resuming %s after pass %d", out, done)
    if env.rank == 0:
        log.info("%s on %d ranks: T = %d memory batches, %d passes (%d epochs requested), lr %.2g",
                 layout, layout.world, tr.T, tr.passes, cfg.epochs, tr.lr)

    # the copy's memory server, started by its leader; the others find it through the store
    store = dist.distributed_c10d._get_default_store()
    key = f"disttgl/{env.run_id}/{env.restart}/server/{tr.copy}"
    server = None
    state = tr.memory_file(tr.copy, done) if done else None
    if state is not None and not state.exists():
        raise DataError(state, "memory of this copy for the checkpoint is missing; cannot resume")
    if tr.leader:
        plan = ServerPlan(T=tr.T, i=layout.i, j=layout.j, k=layout.k, copy=tr.copy, num_batches=tr.nb["train"],
                          num_nodes=tr.num_nodes, dim=cfg.dim, start=done * tr.T, end=tr.passes * tr.T,
                          capacity=buffer_capacity(tr.meta, layout.j, tr.num_nodes), timeout=timeout,
                          state=None if state is None else str(state))
        server, address, authkey = start_server(plan)
        store.set(key, json.dumps({"address": address, "authkey": authkey.hex(), "capacity": plan.capacity}))
    store.wait([key], timedelta(seconds=timeout))
    info = json.loads(store.get(key))
    client = MemoryClient(info["address"], bytes.fromhex(info["authkey"]), env.rank, info["capacity"],
                          timeout=timeout, server=server)
    memory = ServedMemory(client, cfg.dim, device)
    holds = tr.holds(done * tr.T, tr.passes * tr.T)
    try:
        from tqdm import tqdm

        for p in range(done, tr.passes):
            t0 = time.perf_counter()
            load = Interval().start()
            server_cpu = process_cpu_seconds(server.pid) if server is not None else None
            with tqdm(total=None, unit="ev", unit_scale=True, desc=f"train {layout} pass {p + 1}",
                      disable=not cfg.progress or env.rank != 0, mininterval=2.0) as bar:
                stats = train_epoch(tr.model, memory, tr.pass_batches(p, holds, memory), tr.optimizer,
                                    tr.feats, loss=cfg.loss, progress=bar, epoch=p + 1)
            train_s = time.perf_counter() - t0
            fields = load.stop()
            if server_cpu is not None:  # our own memory server is not another process's load
                fields["own_cpu_s"] += (process_cpu_seconds(server.pid) or server_cpu) - server_cpu
            rates = [None] * layout.world
            dist.all_gather_object(rates, (stats.events, train_s, stats.loss, fields, socket.gethostname()))
            table = None
            if tr.leader:
                table = client.flush((p + 1) * tr.T - 1)
                with atomic_path(tr.memory_file(tr.copy, p + 1)) as tmp, open(tmp, "wb") as f:
                    np.save(f, table)
            if env.rank == 0:
                row, best = _evaluate(tr, table, p, stats, rates, best, train_s)
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                log.info("pass %d: loss %.4f, %.0f train events/s on %d ranks, val AP %.4f MRR %.4f (best pass %d)",
                         p + 1, row["train_loss"], row["train_events_per_s"], layout.world, row["val_ap"],
                         row["val_mrr"], best["best_epoch"])
            dist.barrier()  # every copy's memory is on disk before the checkpoint names it
            if env.rank == 0:
                write_jsonl(out / "metrics.jsonl", history)
                save_checkpoint(ckpt_path, {"epoch": p + 1, "model": tr.model.state_dict(),
                                            "optimizer": tr.optimizer.state_dict(), "history": history,
                                            "best": best, "parallelism": str(layout), "config": asdict(cfg)})
            if tr.leader and p > 1:  # checkpoint p (written before this barrier) no longer needs it
                tr.memory_file(tr.copy, p - 1).unlink(missing_ok=True)
    finally:
        holds.close()
        client.close()
        if server is not None:
            try:
                server.wait(timeout=30)
            except Exception:  # noqa: BLE001
                server.kill()
    if server is not None and server.returncode not in (0, None):
        raise MemoryServerError(f"memory server of copy {tr.copy} exited with code {server.returncode}")
    dist.barrier()
    if env.rank != 0:
        return None
    summary = _summary(cfg, layout, history, best) | {"lr": tr.lr}  # base (or derived) lr · W
    write_summary(out, summary, "pass")
    return summary


def _evaluate(tr: _Trainer, table: np.ndarray, p: int, stats: Any, rates: list, best: dict[str, Any],
              train_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0: val (and test when val improves) with copy 0's memory carried on from training, in
    batches of B as the single-process path does (the cache never groups val/test by i)."""
    lay, cfg = tr.lay, tr.cfg
    state = table_state(table, cfg.dim, tr.device)

    def loader(split: str) -> BatchLoader:
        return BatchLoader(cfg.cache, split, [(b, 0) for b in range(tr.nb[split])], prefetch=cfg.prefetch,
                           device=tr.device)

    val = evaluate(tr.model, state, loader("val"), tr.feats, split="val", epoch=p + 1)
    events = sum(r[0] for r in rates)
    wall = max(r[1] for r in rates)
    row = {"epoch": p + 1, "epochs_trained": (p + 1) * lay.j * lay.k,
           "train_loss": float(np.mean([r[2] for r in rates])),
           "train_events_per_s": events / wall if wall > 0 else 0.0,
           "rank_events_per_s": [r[0] / r[1] if r[1] > 0 else 0.0 for r in rates],
           "val_ap": val["ap"], "val_mrr": val["mrr"], "val_ap_1neg": val["ap_1neg"],
           "time_split": {k: v / max(stats.seconds, 1e-9) for k, v in stats.timing.items()},
           **rank_load(rates)}
    if improves(val["mrr"], best.get("val_mrr")):
        test = evaluate(tr.model, state, loader("test"), tr.feats, split="test", epoch=p + 1)
        best = {"best_epoch": p + 1, "val_mrr": val["mrr"], "val_ap": val["ap"], "test_ap": test["ap"],
                "test_mrr": test["mrr"], "test_ap_1neg": test["ap_1neg"]}
    return row, best


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


def _summary(cfg: TrainConfig, layout: Layout, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    per_rank = np.mean([r["rank_events_per_s"] for r in history], axis=0).tolist() if history else []
    config = asdict(cfg) | {"parallelism": str(layout), "world_size": layout.world,
                            "static_memory": cfg.static is not None}
    return run_summary(history, best, config) | {
        # best_epoch counts passes here (each j·k epochs' worth of batches)
        "best_unit": "pass", "best_epochs_trained": best["best_epoch"] * layout.j * layout.k,
        "epochs_trained": len(history) * layout.j * layout.k, "rank_events_per_s": per_rank,
        "parallelism": str(layout), "world_size": layout.world}


# ----------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disttgl.train.command import add_arguments as add_train_arguments  # includes --parallelism, --timeout

    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry for ``disttgl train --parallelism`` and ``python -m disttgl.train``."""
    from disttgl.train.command import train_config

    cfg = train_config(args)
    replace(cfg, parallelism="1x1x1").check()
    spec = cfg.parallelism.replace(" ", "").lower()
    if spec == "auto" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        log.info("parallelism auto -> 1x1x1: one process (start more with torchrun --nproc-per-node)")
        spec = "1x1x1"
    if spec in ("1x1x1", "1"):  # no server, no process group
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DataError(None, f"--parallelism 1x1x1 is one process, torchrun started {os.environ['WORLD_SIZE']}")
        from disttgl.train.fit import train

        train(replace(cfg, parallelism="1x1x1"))
        return 0
    try:
        train_parallel(cfg, timeout=getattr(args, "timeout", 300.0))
    except PeerFailure as exc:
        print(f"disttgl train: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
