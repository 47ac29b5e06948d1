"""Validation MRR against wall clock: RandomTMA, SuperTMA and the single-process run, same budget.

For a graph store (or a raw file `disttgl convert` reads), it partitions the graph twice (random and
super, --parts P, --rule), runs `disttgl tma` on each for --budget of training, and the
single-process `disttgl train` for --epochs epochs, whose rows are cut at the same budget on two
clocks: `single`, its training time alone (the TMA runs' clock: their evaluation runs beside the
trainers, in the coordinator), and `single_wall`, its epochs' whole time with its own validation.
Every process runs with --threads threads, so on a machine with fewer cores than P + 1 the TMA
trainers share cores with each other and with the evaluation (the JSON records `cpu_count`).
`--single-only` reruns just the single process (e.g. with more --epochs) in an existing --work.

    python benchmarks/tma.py GRAPH.h5 [--parts 3] [--budget 5min] [--sync-every 60s] [--epochs 20] \
        [--rule induced] [--clusters C] [--work DIR] [--json out.json] [-- extra model flags]

Prints one line per system (events kept, rounds or epochs in budget, best val MRR, test MRR at it,
time to the best) and writes the curves to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from disttgl.data.graph_store import read_labels
from disttgl.tma.plan import parse_duration

REPO = Path(__file__).resolve().parents[1]


def disttgl(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "disttgl", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"disttgl {args[0]} failed:\n{proc.stderr[-4000:]}")


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def curve_single(run: Path, budget: float, train_events: int, clock: str = "train") -> list[dict]:
    """(seconds, val_mrr) of the single-process epochs within the budget, on one of two clocks:
    ``train``, its training time alone (train events / its train events/s, summed: what a TMA run's
    clock counts, its evaluation running beside it in the coordinator), or ``wall``, its epochs' whole
    time with its own validation (and test when validation improved)."""
    out, t = [], 0.0
    for r in rows(run / "metrics.jsonl"):
        t += r["seconds"] if clock == "wall" else train_events / r["train_events_per_s"]
        if t > budget:
            break
        out.append({"wall_s": t, "val_mrr": r["val_mrr"], "epoch": r["epoch"]})
    return out


def curve_tma(run: Path) -> list[dict]:
    return [{"wall_s": r["wall_s"], "val_mrr": r["val_mrr"], "round": r["round"]} for r in rows(run / "metrics.jsonl")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", help="graph store (.h5) or a raw file (converted with --format)")
    ap.add_argument("--format", default="jodie", help="raw file's format for `disttgl convert`")
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--rule", default="induced")
    ap.add_argument("--clusters", type=int, default=None)
    ap.add_argument("--budget", default="5min", help="training time of each system")
    ap.add_argument("--sync-every", default="60s")
    ap.add_argument("--epochs", type=int, default=20, help="single process: epochs (its rows are cut at the budget)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--single-only", action="store_true", help="only the single process (its curves, both clocks)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    a.extra = argv[cut + 1:]  # model flags for every run, after --: e.g. -- --dim 32
    budget = parse_duration(a.budget, "--budget")
    work = Path(a.work or tempfile.mkdtemp(prefix="tma-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    graph = Path(a.graph).resolve()
    if graph.suffix != ".h5":
        disttgl("convert", str(graph), "--format", a.format, "--out", "graph.h5", cwd=work)
        graph = work / "graph.h5"
    flags = ["--threads", str(a.threads), *a.extra]
    results = {"graph": str(graph), "parts": a.parts, "rule": a.rule, "budget_s": budget, "sync_every": a.sync_every,
               "cpu_count": os.cpu_count(), "systems": {}}
    disttgl("batches", str(graph), "--out", "batches.h5", "--no-progress", cwd=work)
    disttgl("train", str(graph), "batches.h5", "--out", "single", "--epochs", str(a.epochs), "--no-progress", *flags,
            cwd=work)
    train_events = int(np.count_nonzero(read_labels(graph)[1] == 0))
    for name, clock in (("single", "train"), ("single_wall", "wall")):
        results["systems"][name] = {"events_kept": 1.0, "clock": clock,
                                    "curve": curve_single(work / "single", budget, train_events, clock)}
    for method in () if a.single_only else ("random", "super"):
        clusters = ["--clusters", str(a.clusters)] if method == "super" and a.clusters else []
        disttgl("partition", str(graph), "--parts", str(a.parts), "--method", method, "--rule", a.rule, *clusters,
                "--out", f"parts-{method}", cwd=work)
        disttgl("tma", f"parts-{method}", "--out", f"tma-{method}", "--sync-every", a.sync_every, "--time-limit",
                f"{budget}s", *flags, cwd=work)
        summary = json.loads((work / f"tma-{method}" / "summary.json").read_text())
        results["systems"][f"{method}_tma"] = {"events_kept": summary["config"]["train_events_kept"],
                                               "rounds": summary["rounds"], "test_mrr_at_best": summary["test_mrr"],
                                               "curve": curve_tma(work / f"tma-{method}")}
    single = json.loads((work / "single" / "summary.json").read_text())
    for name, s in results["systems"].items():
        best = max(s["curve"], key=lambda r: r["val_mrr"], default=None)
        s["best_val_mrr"] = best["val_mrr"] if best else None
        s["time_to_best_s"] = best["wall_s"] if best else None
        if name.startswith("single"):  # its test MRR belongs to its best epoch overall; say so when that lies past the budget
            s["test_mrr_at_best"] = single["test_mrr"] if best and best["epoch"] == single["best_epoch"] else None
        print(f"{name:12s} events kept {s['events_kept']:.3f}  points in budget {len(s['curve']):3d}  best val MRR "
              f"{s['best_val_mrr'] if s['best_val_mrr'] is not None else float('nan'):.4f} at "
              f"{s['time_to_best_s'] or 0:.0f} s  test MRR {s.get('test_mrr_at_best')}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
