"""Snapshot DGNNs on this machine (docs/design.md §11.4, §11.6, §11.9): transfer bytes and time, whole
snapshots against graph differences, then training throughput and communication against P, and
optionally PyTorch Geometric Temporal baselines on the same snapshots.

    python benchmarks/snapshot.py GRAPH [--num-snapshots T | --delta S] [--edge-life L] [--symmetric]
        [--procs 1 2 4] [--model gcn-lstm tmgcn] [--epochs 3] [--hidden 32] [--seed 0] [--threads 1]
        [--baseline pyg-temporal [--pyg-models gconvlstm-k1 gconvlstm-k2 evolvegcn-h]]
        [--device cpu|cuda] [--repeats 3] [--out result.json]

Transfer: ``snapshot_transfer.py``'s measurement (imported, not copied) on the cut snapshots.
Training: ``disttgl snapshot-train`` once per ``--model`` as the plain single process, then under
torchrun with ``--parallel`` for each P in ``--procs`` (none: ``--procs`` alone) (gloo, CPU,
``--threads`` per rank): train events/s, wall time, test MRR and AP, every rank's communication bytes
of the training step (all-to-all forward and backward, the scoring exchange, the gradient
all-reduce), the all-to-all volume the block formula predicts, and the rows of X·W a
vertex-partitioned graph convolution would fetch on the same graph (its halo, which grows with P
where the all-to-all stays below T·N·d). On a 2-core machine P ranks share the cores, so throughput
against P measures overhead, not speed-up.

Baselines (``--baseline pyg-temporal``): ``pyg_temporal.py`` (this folder) trains PyG-Temporal's
GConvLSTM (K = 1, 2) and EvolveGCN-H on the same snapshots file with snapshot-train's features,
targets, negatives, epochs, seed and link predictor, one process each as the ``single`` runs; the
result's ``comparison`` lists every single-process run side by side (test MRR / AP, train seconds,
train events/s). torch-geometric-temporal is an optional dependency, installed with
``pip install --no-deps torch-geometric-temporal==0.56.2``: ``--no-deps`` since it requires
torch-sparse and torch-scatter, which have no wheel for torch 2.13, and the two layers used need
neither; its one module-level ``from torch_sparse import SparseTensor`` is met by a stand-in module
aliasing PyG's own placeholder class (``pyg_temporal.py``'s docstring). Without the package the
baselines are skipped with one line and the rest runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from disttgl.data.graph_store import graph_info
from disttgl.snapshot.build import SnapshotParams
from disttgl.snapshot.partition import Partition, block_bounds, stage_volume, vertex_halo_rows
from disttgl.snapshot.store import write_snapshots
from disttgl.snapshot.task import split_targets
import pyg_temporal  # noqa: E402 - this directory is on sys.path
from snapshot_transfer import _measure, _snapshots  # noqa: E402

TRAINING = ("stage_forward", "stage_backward", "score_forward", "score_backward", "grad_allreduce")
COMPARED = ("model", "test_mrr", "test_ap", "best_epoch", "train_seconds", "train_events_per_s", "total_seconds",
            "wall_seconds", "contended")
PYG_MODELS = {"gconvlstm-k1": ("gconvlstm", 1), "gconvlstm-k2": ("gconvlstm", 2), "evolvegcn-h": ("evolvegcn-h", 1)}


def _common(out: Path, args: argparse.Namespace) -> list[str]:
    """The flags every run shares: snapshot-train's and the baselines' alike."""
    return ["--out", str(out), "--epochs", str(args.epochs), "--hidden", str(args.hidden), "--seed", str(args.seed),
            "--threads", str(args.threads), "--eval-negatives", "49"]


def _train(snaps_file: Path, graph: str, out: Path, procs: int | None, model: str, args: argparse.Namespace) -> dict:
    """One snapshot-train run (procs None: the plain single process); its summary plus wall time."""
    flags = [*_common(out, args), "--model", model, "--m-window", str(args.m_window)]
    cmd = [sys.executable, "-m", "disttgl", "snapshot-train", str(snaps_file), graph, *flags]
    if procs is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               *cmd[1:], "--parallel"]
    return _timed(cmd, out)


def _baseline(snaps_file: Path, graph: str, out: Path, name: str, args: argparse.Namespace) -> dict:
    """One PyG-Temporal baseline run (``pyg_temporal.py``, one process); its summary plus wall time."""
    model, k = PYG_MODELS[name]
    cmd = [sys.executable, str(Path(__file__).with_name("pyg_temporal.py")), str(snaps_file), graph,
           *_common(out, args), "--model", model, "--cheb-k", str(k)]
    return _timed(cmd, out)


def _timed(cmd: list[str], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()) | {"wall_seconds": wall, "_rows": rows}


def _row(name: str, s: dict, snaps, model: str, args: argparse.Namespace) -> dict:
    train_events = split_targets(snaps, 0).events
    row = {"run": name, "model": s["model"], "train_events_per_s": s["train_events_per_s"],
           "train_seconds": pyg_temporal.train_seconds(s["_rows"], train_events), "wall_seconds": s["wall_seconds"],
           "total_seconds": s["total_seconds"], "best_epoch": s["best_epoch"], "test_mrr": s["test_mrr"],
           "test_ap": s["test_ap"], "contended": s["machine"].get("contended")}
    par = s.get("parallel")
    if par is None:
        return row
    part = Partition(tuple(par["snapshot_blocks"]), tuple(par["vertex_blocks"]))
    t, elem = part.snapshots[-1], 4  # float32 training
    per_rank = {k: [r.get(k, {"sent": 0})["sent"] // args.epochs for r in par["comm_bytes"]] for k in TRAINING}
    stage = per_rank["stage_forward"]
    halo = vertex_halo_rows(snaps, block_bounds(snaps.num_nodes, part.size), t, args.m_window - 1
                            if model == "tmgcn" else 0)
    return row | {"P": part.size, "sent_per_rank_per_epoch": per_rank,
                  "all_to_all_bytes_per_direction": sum(stage),
                  "all_to_all_formula_bytes": stage_volume(part, args.hidden)["total"] * elem,
                  "all_to_all_bound_bytes": stage_volume(part, args.hidden)["bound"] * elem,
                  "vertex_halo_bytes_per_direction": sum(halo) * args.hidden * elem}


def _print(r: dict) -> None:
    extra = (f"  all-to-all/rank/epoch {r['sent_per_rank_per_epoch']['stage_forward']} B, total "
             f"{r['all_to_all_bytes_per_direction']} B (formula {r['all_to_all_formula_bytes']}, bound "
             f"{r['all_to_all_bound_bytes']})  vertex halo {r['vertex_halo_bytes_per_direction']} B"
             if "P" in r else "")
    print(f"{r['run']:7s} {r['train_events_per_s']:12,.0f} events/s  {r['wall_seconds']:6.1f} s  "
          f"test MRR {r['test_mrr']:.4f} AP {r['test_ap']:.4f}{extra}")


def _baselines(snaps_file: Path, tmp: Path, snaps, args: argparse.Namespace) -> list[dict]:
    """The ``--baseline`` rows; none, with one line saying why, without torch-geometric-temporal."""
    if not args.baseline:
        return []
    if pyg_temporal.UNAVAILABLE:
        print(f"skipping the PyG-Temporal baselines: {pyg_temporal.UNAVAILABLE}")
        return []
    rows = []
    for name in args.pyg_models:
        s = _baseline(snaps_file, args.input, tmp / f"pyg-{name}", name, args)
        rows.append(_row(s["model"], s, snaps, "", args))
        _print(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", help="graph store (cut into snapshots here)")
    p.add_argument("--delta", type=float)
    p.add_argument("--num-snapshots", type=int)
    p.add_argument("--edge-life", type=int, default=SnapshotParams().edge_life)
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="transfer device")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, nargs="*", default=[1, 2, 4], help="ranks of the parallel runs (none: none)")
    p.add_argument("--model", nargs="+", default=["gcn-lstm"], choices=("gcn-lstm", "tmgcn"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of every run (weights and negatives)")
    p.add_argument("--baseline", choices=("pyg-temporal",), help="also train PyG-Temporal encoders, one process")
    p.add_argument("--pyg-models", nargs="+", default=list(PYG_MODELS), choices=list(PYG_MODELS))
    p.add_argument("--m-window", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    snaps, build_seconds = _snapshots(args)
    whole, a = _measure(snaps, args.device, "whole", args.repeats)
    diff, b = _measure(snaps, args.device, "diff", args.repeats)
    identical = all(all(torch.equal(x, y) for x, y in zip(sa, sb)) for sa, sb in zip(a, b))
    transfer = {"device": args.device, "whole": whole, "diff": diff, "identical": identical,
                "bytes_ratio": whole["bytes"] / diff["bytes"] if diff["bytes"] else None,
                "time_ratio": whole["seconds_min"] / diff["seconds_min"] if diff["seconds_min"] else None}
    print(f"transfer on {args.device}: whole {whole['bytes'] / 1e6:.3f} MB {whole['seconds_min'] * 1e3:.2f} ms, "
          f"diff {diff['bytes'] / 1e6:.3f} MB {diff['seconds_min'] * 1e3:.2f} ms, bytes ratio "
          f"{transfer['bytes_ratio']:.3f} (L/2 = {snaps.edge_life / 2}), identical: {identical}")
    info = graph_info(args.input)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        snaps_file = Path(tmp) / "snapshots.h5"
        write_snapshots(snaps, snaps_file, graph_sha256=str(info["sha256"] or ""), num_events=info["num_events"],
                        bipartite=bool(info.get("bipartite", False)), source=args.input)
        for model in args.model:
            prefix = f"{model} " if len(args.model) > 1 else ""  # one model: the run names stay single, P=n
            for name, n in [("single", None)] + [(f"P={n}", n) for n in args.procs]:
                run_dir = Path(tmp) / f"{model}-{name}"
                rows.append(_row(prefix + name, _train(snaps_file, args.input, run_dir, n, model, args), snaps,
                                 model, args))
                _print(rows[-1])
        baselines = _baselines(snaps_file, Path(tmp), snaps, args)
    single = [r for r in rows if "P" not in r] + baselines
    result = {"input": args.input, "torch": torch.__version__, "num_snapshots": snaps.num_snapshots,
              "num_nodes": snaps.num_nodes, "edge_life": snaps.edge_life, "symmetric": bool(snaps.symmetric),
              "build_seconds": build_seconds, "models": args.model, "hidden": args.hidden, "epochs": args.epochs,
              "seed": args.seed, "threads": args.threads, "cpus": os.cpu_count(), "transfer": transfer,
              "training": rows, "baselines": baselines,
              "baseline_version": pyg_temporal.VERSION if args.baseline else None,
              "comparison": [{k: r[k] for k in COMPARED} for r in single]}
    if args.baseline:
        print(f"{'model':18s} {'test MRR':>8s} {'test AP':>8s} {'train s':>8s} {'events/s':>10s} {'wall s':>7s}")
        for r in result["comparison"]:
            print(f"{r['model']:18s} {r['test_mrr']:8.4f} {r['test_ap']:8.4f} {r['train_seconds']:8.2f} "
                  f"{r['train_events_per_s']:10,.0f} {r['wall_seconds']:7.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
