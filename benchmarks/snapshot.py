"""Snapshot DGNNs on this machine (docs/design.md §11.4, §11.6): transfer bytes and time, whole
snapshots against graph differences, then training throughput and communication against P.

    python benchmarks/snapshot.py GRAPH [--num-snapshots T | --delta S] [--edge-life L]
        [--procs 1 2 4] [--model gcn-lstm|tmgcn] [--epochs 3] [--hidden 32] [--threads 1]
        [--device cpu|cuda] [--repeats 3] [--out result.json]

Transfer: ``snapshot_transfer.py``'s measurement (imported, not copied) on the cut snapshots.
Training: ``disttgl snapshot-train`` once as the plain single process, then under torchrun with
``--parallel`` for each P in ``--procs`` (gloo, CPU, ``--threads`` per rank): train events/s, wall
time, test MRR, every rank's communication bytes of the training step (all-to-all forward and
backward, the scoring exchange, the gradient all-reduce), the all-to-all volume the block formula
predicts, and the rows of X·W a vertex-partitioned graph convolution would fetch on the same graph
(its halo, which grows with P where the all-to-all stays below T·N·d). On a 2-core machine P ranks
share the cores, so throughput against P measures overhead, not speed-up.

No PyTorch Geometric Temporal baseline (its GConvLSTM / EvolveGCN beside ours): it does not install
beside torch 2.13 (docs/design.md §11.9). torch-geometric-temporal 0.56.2 requires torch-sparse and
torch-scatter, which PyPI carries only as 2023 source releases (no wheel for any torch), and its
package imports torch_sparse on import, so not even its GConvLSTM loads without them.
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
from snapshot_transfer import _measure, _snapshots  # noqa: E402 - this directory is on sys.path

TRAINING = ("stage_forward", "stage_backward", "score_forward", "score_backward", "grad_allreduce")


def _train(snaps_file: Path, graph: str, out: Path, procs: int | None, args: argparse.Namespace) -> dict:
    """One snapshot-train run (procs None: the plain single process); its summary plus wall time."""
    flags = ["--out", str(out), "--model", args.model, "--epochs", str(args.epochs), "--hidden", str(args.hidden),
             "--threads", str(args.threads), "--m-window", str(args.m_window), "--eval-negatives", "49"]
    cmd = [sys.executable, "-m", "disttgl", "snapshot-train", str(snaps_file), graph, *flags]
    if procs is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               *cmd[1:], "--parallel"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text()) | {"wall_seconds": time.perf_counter() - start}


def _row(name: str, s: dict, snaps, args: argparse.Namespace) -> dict:
    row = {"run": name, "train_events_per_s": s["train_events_per_s"], "wall_seconds": s["wall_seconds"],
           "total_seconds": s["total_seconds"], "test_mrr": s["test_mrr"], "contended": s["machine"].get("contended")}
    par = s.get("parallel")
    if par is None:
        return row
    part = Partition(tuple(par["snapshot_blocks"]), tuple(par["vertex_blocks"]))
    t, elem = part.snapshots[-1], 4  # float32 training
    per_rank = {k: [r.get(k, {"sent": 0})["sent"] // args.epochs for r in par["comm_bytes"]] for k in TRAINING}
    stage = per_rank["stage_forward"]
    halo = vertex_halo_rows(snaps, block_bounds(snaps.num_nodes, part.size), t, args.m_window - 1
                            if args.model == "tmgcn" else 0)
    return row | {"P": part.size, "sent_per_rank_per_epoch": per_rank,
                  "all_to_all_bytes_per_direction": sum(stage),
                  "all_to_all_formula_bytes": stage_volume(part, args.hidden)["total"] * elem,
                  "all_to_all_bound_bytes": stage_volume(part, args.hidden)["bound"] * elem,
                  "vertex_halo_bytes_per_direction": sum(halo) * args.hidden * elem}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", help="graph store (cut into snapshots here)")
    p.add_argument("--delta", type=float)
    p.add_argument("--num-snapshots", type=int)
    p.add_argument("--edge-life", type=int, default=SnapshotParams().edge_life)
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="transfer device")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--model", default="gcn-lstm", choices=("gcn-lstm", "tmgcn"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=32)
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
        runs = [("single", None)] + [(f"P={n}", n) for n in args.procs]
        for name, n in runs:
            rows.append(_row(name, _train(snaps_file, args.input, Path(tmp) / name, n, args), snaps, args))
            r = rows[-1]
            extra = (f"  all-to-all/rank/epoch {r['sent_per_rank_per_epoch']['stage_forward']} B, total "
                     f"{r['all_to_all_bytes_per_direction']} B (formula {r['all_to_all_formula_bytes']}, bound "
                     f"{r['all_to_all_bound_bytes']})  vertex halo {r['vertex_halo_bytes_per_direction']} B"
                     if "P" in r else "")
            print(f"{name:7s} {r['train_events_per_s']:12,.0f} events/s  {r['wall_seconds']:6.1f} s  "
                  f"test MRR {r['test_mrr']:.4f}{extra}")
    result = {"input": args.input, "torch": torch.__version__, "num_snapshots": snaps.num_snapshots,
              "num_nodes": snaps.num_nodes, "edge_life": snaps.edge_life, "build_seconds": build_seconds,
              "model": args.model, "hidden": args.hidden, "epochs": args.epochs, "threads": args.threads,
              "cpus": os.cpu_count(), "transfer": transfer, "training": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
