"""Snapshot transfer to the training device: bytes and time, whole snapshots against graph
differences rebuilt on the device (docs/design.md §11.4).

    python benchmarks/snapshot_transfer.py INPUT [--delta S | --num-snapshots T] [--edge-life L]
        [--symmetric] [--device cpu|cuda] [--repeats 3] [--out result.json]

INPUT is a snapshots file (used as it is) or a graph store (cut with the given parameters first).
Each mode streams every snapshot ``--repeats`` times after one untimed warm-up pass; the time of a
pass is the copy plus, for ``diff``, the rebuild, with the device synchronised around each snapshot.
The two modes' adjacencies are compared snapshot by snapshot (``identical``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import h5py
import torch

from disttgl.data.graph_store import load_graph
from disttgl.snapshot.build import SnapshotParams, build_snapshots
from disttgl.snapshot.store import KIND, load_snapshots
from disttgl.snapshot.streamer import SnapshotStreamer


def _snapshots(args: argparse.Namespace):
    with h5py.File(args.input, "r") as f:
        kind = f.attrs.get("kind")
    if (kind.decode() if isinstance(kind, bytes) else kind) == KIND:
        return load_snapshots(args.input).snapshots, 0.0
    if args.delta is None and args.num_snapshots is None:
        sys.exit("a graph store needs --delta or --num-snapshots")
    g = load_graph(args.input, features=False)
    start = time.perf_counter()
    snaps = build_snapshots(g.src, g.dst, g.t, g.split, g.num_nodes,
                            SnapshotParams(delta=args.delta, num_snapshots=args.num_snapshots,
                                           edge_life=args.edge_life, symmetric=args.symmetric))
    return snaps, time.perf_counter() - start


def _measure(snaps, device: str, mode: str, repeats: int) -> tuple[dict, list]:
    for _ in SnapshotStreamer(snaps, device, mode).stream():  # warm-up: allocator, CUDA context, kernels
        pass
    seconds, result = [], None
    for r in range(repeats):
        streamer = SnapshotStreamer(snaps, device, mode, timed=True)
        kept = [(a.row.cpu(), a.col.cpu(), a.count.cpu()) if r == 0 else None for a in streamer.stream()]
        seconds.append(streamer.seconds)
        if r == 0:
            result = kept
            first = streamer
    return {"bytes": first.bytes_copied, "entries": first.entries_copied, "seconds": seconds,
            "seconds_min": min(seconds), "seconds_mean": statistics.fmean(seconds),
            "gb_per_s": first.bytes_copied / min(seconds) / 1e9 if min(seconds) > 0 else None}, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", help="snapshots file or graph store")
    p.add_argument("--delta", type=float)
    p.add_argument("--num-snapshots", type=int)
    p.add_argument("--edge-life", type=int, default=SnapshotParams().edge_life)
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    snaps, build_seconds = _snapshots(args)
    whole, a = _measure(snaps, args.device, "whole", args.repeats)
    diff, b = _measure(snaps, args.device, "diff", args.repeats)
    identical = all(all(torch.equal(x, y) for x, y in zip(sa, sb)) for sa, sb in zip(a, b))
    result = {"input": args.input, "device": args.device,
              "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor(),
              "torch": torch.__version__, "num_snapshots": snaps.num_snapshots, "num_nodes": snaps.num_nodes,
              "edge_life": snaps.edge_life, "symmetric": snaps.symmetric, "build_seconds": build_seconds,
              "whole": whole, "diff": diff, "bytes_ratio": whole["bytes"] / diff["bytes"] if diff["bytes"] else None,
              "time_ratio": whole["seconds_min"] / diff["seconds_min"] if diff["seconds_min"] else None,
              "half_edge_life": snaps.edge_life / 2, "identical": identical}
    for mode, r in (("whole", whole), ("diff", diff)):
        print(f"{mode:5s}  {r['bytes'] / 1e6:10.3f} MB  {r['entries']:12,d} entries  {r['seconds_min'] * 1e3:9.2f} ms (best of {args.repeats})")
    print(f"whole/diff: bytes {result['bytes_ratio']:.3f} (L/2 = {snaps.edge_life / 2}), time {result['time_ratio'] or float('nan'):.3f}; "
          f"identical adjacency: {identical}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
