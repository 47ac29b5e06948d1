"""What a snapshot run's ``checkpoint.pt`` holds and how a run continues from it (docs/design.md §11.7).

After every epoch the writer (the single process, or rank 0) saves, atomically, the weights, Adam's
state, the training negatives' generator state, the epochs' rows, the best epoch so far, the
settings, what identifies the snapshots, the world size, and every rank's byte counts (transfer and
communication), so that a resumed run equals an uninterrupted one: the same weights, the same
negatives, the same rows and summary, counters included. Only tensors and plain values go in, and
the file is read with ``weights_only=True`` (``disttgl.train.run_files``).

The evaluation negatives are drawn from their own fixed seed and are not saved: they are drawn again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disttgl.errors import DataError
from disttgl.snapshot.comm import Comm
from disttgl.snapshot.store import SnapshotFile
from disttgl.snapshot.streamer import SnapshotStreamer
from disttgl.train.run_files import resumable_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"


def snapshots_identity(sf: SnapshotFile) -> dict[str, Any]:
    """What must not change between a run and its resumption: the graph and how it was cut."""
    s = sf.snapshots
    return {"graph_sha256": sf.graph_sha256, "num_events": sf.num_events, "num_nodes": s.num_nodes,
            "num_snapshots": s.num_snapshots, "edge_life": s.edge_life, "delta": float(s.delta),
            "symmetric": bool(s.symmetric)}


@dataclass
class RankCounts:
    """Every rank's byte counts: what ``summary.json`` reports and a resumed rank starts from.

    ``comm``: per rank {collective: {"sent", "received"}} (empty for one process); ``transfer``:
    bytes each rank's streamer copied; ``entries``/``seconds``: the writer's streamer's."""

    comm: list[dict[str, dict[str, int]]]
    transfer: list[int]
    entries: int
    seconds: float


def gather_counts(streamer: SnapshotStreamer, comm: Comm | None) -> RankCounts:
    """Every rank's counters (a collective under ``comm``: one sum of a row per rank, not counted)."""
    if comm is None:
        return RankCounts([], [streamer.bytes_copied], streamer.entries_copied, streamer.seconds)
    names = sorted(comm.counter.sent)
    row = torch.zeros(comm.size, 2 * len(names) + 1, dtype=torch.float64, device=streamer.device)
    row[comm.rank] = torch.tensor([comm.counter.sent[k] for k in names] + [comm.counter.received[k] for k in names]
                                  + [streamer.bytes_copied], dtype=torch.float64)
    torch.distributed.all_reduce(row, group=comm.group)  # bookkeeping, not counted
    table = row.cpu().long().tolist()  # bytes stay below 2^53: exact in float64
    per_rank = [{k: {"sent": r[i], "received": r[len(names) + i]} for i, k in enumerate(names)} for r in table]
    return RankCounts(per_rank, [r[-1] for r in table], streamer.entries_copied, streamer.seconds)


def save_epoch(out: Path, *, epochs_done: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
               history: list[dict[str, Any]], best: dict[str, Any], config: Any, rng: np.random.Generator,
               identity: dict[str, Any], world: int, counts: RankCounts) -> None:
    """Write ``out/checkpoint.pt`` after ``epochs_done`` epochs (atomically).

    Args:
        config: the run's settings (a dataclass, stored as a dict).
        rng: the training negatives' generator, as it stands after the epoch.
    """
    save_checkpoint(out / CHECKPOINT, {
        "epoch": epochs_done, "model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
        "best": best, "config": asdict(config), "train_rng": rng.bit_generator.state, "snapshots": identity,
        "world": world, "counts": asdict(counts)})


def _changes(identity: dict[str, Any], world: int):  # noqa: ANN202 - a closure for resumable_checkpoint
    def changes(ckpt: dict[str, Any]) -> list[str]:
        out = [f"snapshots {k}" for k, v in identity.items() if (ckpt.get("snapshots") or {}).get(k) != v]
        return out + (["world size"] if ckpt.get("world") != world else [])
    return changes


@dataclass
class Resumed:
    """Where a run continues: epochs done, their rows, the best epoch (nothing done: a fresh run)."""

    done: int
    history: list[dict[str, Any]]
    best: dict[str, Any]


def resume(out: Path, config: Any, identity: dict[str, Any], world: int, rank: int, model: torch.nn.Module,
           opt: torch.optim.Optimizer, rng: np.random.Generator, streamer: SnapshotStreamer,
           comm: Comm | None) -> Resumed:
    """Restore the run from ``out/checkpoint.pt`` when ``config.resume`` and the checkpoint was made
    with the same settings, snapshots and world size; else a fresh start (a warning says why).

    Every rank reads the file (rank 0 holds the run directory's lock by then) and restores its own
    counters; the ranks then check they all start from the same epoch.

    Args:
        config: the run's settings (with ``resume``).
        identity: :func:`snapshots_identity` of this run's snapshots.
        rank: this rank (0 for one process).
        rng: the training negatives' generator, set to the saved state.
    """
    path = out / CHECKPOINT
    ckpt = resumable_checkpoint(path, config, _changes(identity, world), quiet=rank != 0)
    state = Resumed(0, [], {"best_epoch": -1, "val_mrr": -1.0})
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            rng.bit_generator.state = ckpt["train_rng"]
            counts = RankCounts(**ckpt["counts"])
            streamer.bytes_copied = int(counts.transfer[rank])
            streamer.entries_copied, streamer.seconds = int(counts.entries), float(counts.seconds)
            if comm is not None:
                comm.counter.sent = {k: int(v["sent"]) for k, v in counts.comm[rank].items()}
                comm.counter.received = {k: int(v["received"]) for k, v in counts.comm[rank].items()}
            state = Resumed(int(ckpt["epoch"]), list(ckpt["history"]), dict(ckpt["best"]))
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            raise DataError(path, f"checkpoint does not fit this run ({type(exc).__name__}: {exc}); "
                                  "delete it or run without --resume") from None
    if comm is not None:  # a rank that saw another file (no shared directory) would compute another run
        done = torch.tensor([state.done, -state.done], dtype=torch.float64, device=streamer.device)
        torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MAX, group=comm.group)
        if done[0].item() != -done[1].item():
            raise DataError(path, f"the ranks found different checkpoints (epochs {int(-done[1].item())} to "
                                  f"{int(done[0].item())}): every rank must see the run directory")
    return state
