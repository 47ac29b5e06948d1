"""Out-of-core preparation: a synthetic stream of --events events generated, converted and cached,
with each stage's peak memory, and the cache's size against the README's formula.

Every stage runs as a fresh `disttgl` subprocess; its peak RSS is the kernel's (``wait4``), and
/proc/PID/status is sampled every 20 ms to split the peak into anonymous memory (the process's own
arrays) and file-backed pages (the memory-mapped graph store: page cache the kernel evicts under
pressure and re-reads when needed). Stages:

1. ``disttgl synth --events N --nodes M --edge-dim D`` (graph.h5);
2. the stream's (src, dst, t) written as a CSV (not measured) and ``disttgl convert --format csv``;
3. ``disttgl batches graph.h5`` with --neg-sets / --eval-negatives;
4. reading: a BatchLoader over --read-batches train batches spread over the cache and the first
   --read-batches validation batches, as training reads them (``disttgl.cache.loader``), beside a
   baseline process that imports the same modules and opens the cache but reads no batch.

The cache size is compared with ``disttgl.cache.format.cache_bytes``: once with the worst-case
factors (an upper bound) and once with the factors measured on this cache (fill, distinct nodes),
which the README quotes for the synthetic stream; ``--factors JSON`` predicts from a smaller run's.

    python benchmarks/outofcore.py [--events 20000000] [--nodes 100000] [--work DIR] [--keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import polars as pl

from disttgl.cache.format import BatchParams, CacheMeta, SizeFactors, cache_bytes

GIB = 2 ** 30


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def measured(cmd: list[str], **popen) -> dict:
    """Run ``cmd``; its wall time, peak RSS (wait4) and sampled peaks of anonymous / file-backed RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status(proc.pid).items():
                peaks[k] = max(peaks.get(k, 0), v)
            done.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    thread.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB,
            "peak_anon_gib": peaks.get("RssAnon", 0) / GIB, "peak_file_gib": peaks.get("RssFile", 0) / GIB}


def write_csv(graph: Path, out: Path, chunk: int = 5_000_000) -> None:
    """The store's events as ``src,dst,t`` (integer ids), chunk by chunk."""
    with h5py.File(graph, "r") as f, open(out, "wb") as fh:
        ev = f["events"]
        fh.write(b"src,dst,t\n")
        for a in range(0, ev["src"].shape[0], chunk):
            pl.DataFrame({"src": ev["src"][a:a + chunk], "dst": ev["dst"][a:a + chunk],
                          "t": ev["t"][a:a + chunk]}).write_csv(fh, include_header=False, float_precision=6)


READ = """
import json, sys, time
import numpy as np
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
cache, graph, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open_cache(cache, graph_path=graph) as c:
    nb, sets, nv = c.num_batches("train"), c.num_neg_sets("train"), c.num_batches("val")
items = [(int(b), int(b) % sets) for b in np.linspace(0, nb - 1, min(n, nb)).astype(int)]
t0 = time.perf_counter()
events = sum(b.num_events for b in BatchLoader(cache, "train", items, graph_path=graph))
events += sum(b.num_events for b in BatchLoader(cache, "val", [(b, 0) for b in range(min(n, nv))], graph_path=graph))
print(json.dumps({"events": events, "batches": len(items) + min(n, nv), "seconds": time.perf_counter() - t0}))
"""


def cache_factors(path: Path) -> tuple[CacheMeta, SizeFactors, int]:
    """The cache's metadata, its measured size factors and its index itemsize."""
    with h5py.File(path, "r") as f:
        meta = CacheMeta(**json.loads(f.attrs["meta"]))
        rows = {name: sum(f[s][name].shape[0] for s in ("train", "val", "test"))
                for name in ("pos_nbr", "pos_node", "neg_root", "neg_nbr", "neg_node")}
        itemsize = f["train"]["pos_root"].dtype.itemsize
    k = max(meta.neighbors, 1)
    positives, negatives = sum(meta.split_events.values()), max(rows["neg_root"], 1)
    return meta, SizeFactors(fill_pos=rows["pos_nbr"] / (2 * k * positives), fill_neg=rows["neg_nbr"] / (k * negatives),
                             nodes_pos=rows["pos_node"] / positives, nodes_neg=rows["neg_node"] / negatives), itemsize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--edge-dim", type=int, default=16)
    p.add_argument("--neg-sets", type=int, default=2, help="train negative sets (the cache grows with them)")
    p.add_argument("--eval-negatives", type=int, default=9, help="val/test negatives per positive")
    p.add_argument("--read-batches", type=int, default=50)
    p.add_argument("--skip-convert", action="store_true", help="skip the CSV export and `disttgl convert`")
    p.add_argument("--factors", type=Path, help="a JSON of an earlier run: predict this cache's size from its factors")
    p.add_argument("--work", type=Path, help="folder for the files (default: a temporary one, deleted)")
    p.add_argument("--keep", action="store_true", help="keep the files in --work")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="disttgl-outofcore-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "disttgl"]
    params = BatchParams(neg_sets=args.neg_sets, eval_negatives=args.eval_negatives)
    res: dict = {"events": args.events, "nodes": args.nodes, "edge_dim": args.edge_dim, "params": asdict(params),
                 "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "stages": {}}
    graph, cache = work / "graph.h5", work / "cache.h5"
    try:
        st = res["stages"]
        st["synth"] = measured([*cli, "synth", "--events", str(args.events), "--nodes", str(args.nodes),
                                "--edge-dim", str(args.edge_dim), "--out", str(graph)], env=env)
        if not args.skip_convert:
            write_csv(graph, work / "events.csv")
            st["convert"] = measured([*cli, "convert", str(work / "events.csv"), "--format", "csv",
                                      "--out", str(work / "graph_csv.h5")], env=env)
            (work / "events.csv").unlink()
        st["batches"] = measured([*cli, "batches", str(graph), "--out", str(cache), "--neg-sets", str(args.neg_sets),
                                  "--eval-negatives", str(args.eval_negatives), "--no-progress"], env=env)
        out = work / "read.json"
        for name, n in (("read_baseline", 0), ("read", args.read_batches)):  # baseline: imports and open only
            with open(out, "w") as fh:
                st[name] = measured([sys.executable, "-c", READ, str(cache), str(graph), str(n)], env=env, stdout=fh)
            st[name].update(json.loads(out.read_text()))
        meta, factors, itemsize = cache_factors(cache)
        size = cache.stat().st_size
        res.update(graph_bytes=graph.stat().st_size, cache_bytes=size, factors=asdict(factors), itemsize=itemsize,
                   split_events=meta.split_events,
                   formula_bytes=cache_bytes(meta.split_events, params, itemsize=itemsize, factors=factors),
                   upper_bound_bytes=cache_bytes(meta.split_events, params, itemsize=itemsize))
        if args.factors:
            given = SizeFactors(**json.loads(args.factors.read_text())["factors"])
            res["predicted_bytes"] = cache_bytes(meta.split_events, params, itemsize=itemsize, factors=given)
    finally:
        if not (args.keep and args.work):
            shutil.rmtree(work, ignore_errors=True)
    res["load_avg_end"] = os.getloadavg()[0]
    for name, s in res["stages"].items():
        print(f"{name:8s} {s['seconds']:7.1f} s  peak RSS {s['peak_rss_gib']:.2f} GiB "
              f"(anonymous {s['peak_anon_gib']:.2f}, file-backed {s['peak_file_gib']:.2f})"
              + (f"  {s['events']:,} events in {s['batches']} batches" if "events" in s else ""))
    f = res["factors"]
    print(f"cache {size / GIB:.3f} GiB ({size / args.events:.0f} bytes an event); formula with this cache's "
          f"factors {res['formula_bytes'] / GIB:.3f} GiB (fill {f['fill_pos']:.3f}/{f['fill_neg']:.3f}, distinct "
          f"nodes {f['nodes_pos']:.2f}/{f['nodes_neg']:.2f}), upper bound {res['upper_bound_bytes'] / GIB:.3f} GiB"
          + (f", predicted from {args.factors} {res['predicted_bytes'] / GIB:.3f} GiB" if args.factors else ""))
    print(f"load average {res['load_avg_start']:.2f} -> {res['load_avg_end']:.2f} on {res['cpus']} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
