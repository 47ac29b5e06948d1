"""Conversion speed and memory.

1. Rows/s of `disttgl convert` against two baselines measured in the same run on the same file, on a
   SNAP-style file of --events rows (default 2M) and on the shared real datasets:
   - "straightforward": what TGL's own gen_graph.py does: pandas.read_csv (numpy.loadtxt when pandas is
     absent), a dict id remap and per-node Python lists filled by a loop over the edges;
   - "numpy": pandas.read_csv, np.unique remapping, one np.lexsort T-CSR and an h5py write: a careful
     vectorised converter, to show how much of our margin is vectorisation alone.
2. Peak RSS of `disttgl convert` on a --big-events (default 20M) SNAP file, in a fresh subprocess.

    python benchmarks/convert.py [--events 2000000] [--big-events 20000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from disttgl.data.convert import ConvertOptions, convert

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write_snap(path: Path, events: int, nodes: int, seed: int = 0) -> None:
    """A SNAP-like file: sparse 1-based ids, increasing unix times, space separated."""
    rng = np.random.default_rng(seed)
    chunk = 5_000_000
    t0 = 1_082_040_961
    with open(path, "wb") as fh:
        for start in range(0, events, chunk):
            n = min(chunk, events - start)
            df = pl.DataFrame({"src": rng.integers(1, nodes + 1, n) * 3, "dst": rng.integers(1, nodes + 1, n) * 3,
                               "t": t0 + start + np.arange(n, dtype=np.int64)})
            df.write_csv(fh, include_header=False, separator=" ")


def parse_baseline(path: Path, sep: str | None, skip: int, usecols) -> tuple[np.ndarray, ...]:
    try:
        import pandas as pd

        df = pd.read_csv(path, sep=sep or r"\s+", header=None, skiprows=skip, usecols=list(usecols))
        return tuple(df.iloc[:, i].to_numpy() for i in range(3))
    except ImportError:
        arr = np.loadtxt(path, delimiter=sep, skiprows=skip, usecols=usecols)
        return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]


def straightforward_convert(path: Path, out: Path, sep: str | None, skip: int = 0, usecols=(0, 1, 2)) -> None:
    """TGL gen_graph.py style: parse, remap through a dict, fill per-node lists edge by edge."""
    src, dst, t = parse_baseline(path, sep, skip, usecols)
    order = np.argsort(t, kind="stable")
    src, dst, t = src[order].tolist(), dst[order].tolist(), t[order].astype(np.float64).tolist()
    ids: dict[int, int] = {}
    for u in src + dst:
        ids.setdefault(u, len(ids))
    adj: list[list[tuple[float, int, int]]] = [[] for _ in ids]
    for e, (u, v, ts) in enumerate(zip(src, dst, t)):
        adj[ids[u]].append((ts, e, ids[v]))
        adj[ids[v]].append((ts, e, ids[u]))
    indptr, nbr, tt, eid = [0], [], [], []
    for row in adj:
        row.sort()
        for ts, e, v in row:
            nbr.append(v), tt.append(ts), eid.append(e)
        indptr.append(len(nbr))
    with h5py.File(out, "w") as f:
        f["events/src"] = np.array([ids[u] for u in src])
        f["events/dst"] = np.array([ids[v] for v in dst])
        f["events/t"] = np.array(t)
        f["tcsr/indptr"], f["tcsr/nbr"], f["tcsr/t"], f["tcsr/eid"] = indptr, nbr, tt, eid


def numpy_convert(path: Path, out: Path, sep: str | None, skip: int = 0, usecols=(0, 1, 2)) -> None:
    """A careful vectorised converter: parse, unique-remap, lexsort, write."""
    src, dst, t = parse_baseline(path, sep, skip, usecols)
    order = np.argsort(t, kind="stable")
    src, dst, t = src[order], dst[order], t[order].astype(np.float64)
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    n = len(src)
    src, dst = inv[:n], inv[n:]
    rows = np.concatenate([src, dst])
    cols = np.concatenate([dst, src])
    eid = np.concatenate([np.arange(n), np.arange(n)])
    tt = np.concatenate([t, t])
    perm = np.lexsort((eid, tt, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(ids)))])
    with h5py.File(out, "w") as f:
        f["events/src"], f["events/dst"], f["events/t"] = src, dst, t
        f["tcsr/indptr"], f["tcsr/nbr"], f["tcsr/t"], f["tcsr/eid"] = indptr, cols[perm], tt[perm], eid[perm]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, path: Path, fmt: str, rows: int, tmp: Path, sep: str | None, skip: int,
            usecols=(0, 1, 2)) -> dict:
    ours = min(timed(lambda: convert([path], tmp / "ours.h5", ConvertOptions(fmt=fmt))) for _ in range(2))
    plain = timed(lambda: straightforward_convert(path, tmp / "plain.h5", sep, skip, usecols))
    vect = min(timed(lambda: numpy_convert(path, tmp / "numpy.h5", sep, skip, usecols)) for _ in range(2))
    result = {"dataset": name, "rows": rows, "disttgl_rows_per_s": rows / ours,
              "straightforward_rows_per_s": rows / plain, "numpy_rows_per_s": rows / vect,
              "speedup_vs_straightforward": plain / ours, "speedup_vs_numpy": vect / ours}
    print(f"{name:>12}: {rows:>10,} rows  disttgl {rows / ours / 1e6:5.2f} M rows/s | straightforward "
          f"{rows / plain / 1e6:5.2f} M rows/s -> {plain / ours:4.1f}x | numpy {rows / vect / 1e6:5.2f} M rows/s "
          f"-> {vect / ours:4.1f}x")
    return result


def peak_rss(path: Path, out: Path) -> dict:
    code = ("import resource, time; from disttgl.data.convert import ConvertOptions, convert; s = time.perf_counter(); "
            f"convert([{str(path)!r}], {str(out)!r}, ConvertOptions(fmt='snap')); "
            "print(time.perf_counter() - s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, kib = proc.stdout.split()
    return {"seconds": float(seconds), "peak_rss_gib": int(kib) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--big-events", type=int, default=20_000_000, help="0 skips the RSS measurement")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    results: dict = {"throughput": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        snap = tmp / "synthetic.txt"
        write_snap(snap, args.events, nodes=max(1000, args.events // 20))
        results["throughput"].append(compare("synthetic", snap, "snap", args.events, tmp, " ", 0))
        wiki = SHARED / "wikipedia" / "wikipedia.csv"
        if wiki.exists():
            results["throughput"].append(compare("wikipedia", wiki, "jodie", 157_474, tmp, ",", 1))
        cm = SHARED / "collegemsg" / "CollegeMsg.txt"
        if cm.exists():
            results["throughput"].append(compare("collegemsg", cm, "snap", 59_835, tmp, " ", 0))
        snap.unlink()
        if args.big_events:
            big = tmp / "big.txt"
            start = time.perf_counter()
            write_snap(big, args.big_events, nodes=args.big_events // 20)
            print(f"wrote {args.big_events:,}-event file ({big.stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s")
            rss = peak_rss(big, tmp / "big.h5")
            rss["events"] = args.big_events
            results["big"] = rss
            print(f"{args.big_events:,} events: converted in {rss['seconds']:.1f} s "
                  f"({args.big_events / rss['seconds'] / 1e6:.2f} M rows/s), peak RSS {rss['peak_rss_gib']:.2f} GiB "
                  f"(target < 4 GiB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
