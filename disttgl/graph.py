"""The graph store: one HDF5 file per dataset holding events, features and the T-CSR.

Layout (DESIGN §3), written once by ``disttgl convert``/``disttgl synth`` and read by every later stage:

- ``events/src``, ``events/dst`` int64 [E]; ``events/t`` float64 [E] (sorted, stable);
  ``events/split`` int8 [E] (0 train, 1 val, 2 test); optional ``events/label`` [E].
- ``edge_feat`` float32 [E + 1, d_e]: row E is all zeros, the "no message yet" sentinel.
- ``node_feat`` float32 [N, d_v] when present.
- ``tcsr/indptr`` int64 [N + 1], ``tcsr/nbr``, ``tcsr/eid`` int64 [nnz], ``tcsr/t`` float64 [nnz]:
  per-node adjacency sorted by (t, eid); both directions unless the graph is stored directed-only.
- ``node_map/original_id`` [N] (the id each node had in the input) and, for bipartite graphs,
  ``node_map/side`` int8 [N] (0 user/source side, 1 item/destination side).
- attributes: num_nodes, num_events, bipartite, directed, source, sha256, sorted_on_input,
  split_rule, format_version.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from disttgl import FORMAT_VERSION
from disttgl.atomic import atomic_path
from disttgl.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TCSR:
    """Temporal CSR: row n's neighbours are ``nbr[indptr[n]:indptr[n+1]]`` sorted by (t, eid)."""

    indptr: np.ndarray  # int64 [N + 1]
    nbr: np.ndarray  # int64 [nnz]
    t: np.ndarray  # float64 [nnz]
    eid: np.ndarray  # int64 [nnz]

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1


@dataclass
class Graph:
    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    split: np.ndarray
    num_nodes: int
    bipartite: bool
    edge_feat: np.ndarray  # [E + 1, d_e], last row zero
    tcsr: TCSR
    node_feat: np.ndarray | None = None
    label: np.ndarray | None = None
    original_id: np.ndarray | None = None
    side: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_events(self) -> int:
        return len(self.src)

    @property
    def edge_dim(self) -> int:
        return int(self.edge_feat.shape[1])

    @property
    def node_dim(self) -> int:
        return 0 if self.node_feat is None else int(self.node_feat.shape[1])


def stable_argsort_ids(keys: np.ndarray, max_key: int) -> np.ndarray:
    """Stable argsort of non-negative integer ids, as an LSD radix sort over 16-bit digits.

    numpy sorts 16-bit keys stably with a counting sort, so each pass is linear; two passes cover
    2^32 ids and run ~2x faster than a comparison-based stable argsort of the int64 keys.
    """
    if max_key >= 1 << 48:
        return np.argsort(keys, kind="stable")
    order = None
    shift = 0
    while True:
        digit = ((keys >> shift) & 0xFFFF).astype(np.uint16)
        order = np.argsort(digit, kind="stable") if order is None else order[np.argsort(digit[order], kind="stable")]
        shift += 16
        if max_key < 1 << shift:
            return order


def build_tcsr(src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int, *,
               directed: bool = False) -> TCSR:
    """Build the T-CSR with one stable sort by row.

    Events are already in (t, eid) order, so laying the endpoints out in event order and sorting
    stably by row leaves every row sorted by (t, eid) without a second key.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if directed:
        order = stable_argsort_ids(src, num_nodes - 1)
        eid, nbr, rows = order, dst[order], src
    else:
        # interleave (src_e, dst_e): position p holds event p // 2, and its neighbour is the other end
        rows = np.empty(2 * len(src), dtype=np.int64)
        rows[0::2], rows[1::2] = src, dst
        order = stable_argsort_ids(rows, num_nodes - 1)
        eid = order >> 1
        nbr = np.where(order & 1, src[eid], dst[eid])
    counts = np.bincount(rows, minlength=num_nodes)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return TCSR(indptr=indptr, nbr=nbr.astype(np.int64, copy=False), t=np.asarray(t, dtype=np.float64)[eid],
                eid=eid.astype(np.int64, copy=False))


def chronological_split(t: np.ndarray, fractions: tuple[float, float] = (0.70, 0.85)) -> np.ndarray:
    """Split sorted events 70/15/15 by time: an event's split is set by where its time falls.

    Boundaries are time quantiles, so events sharing a timestamp never straddle two splits.
    """
    split = np.zeros(len(t), dtype=np.int8)
    if len(t) == 0:
        return split
    val_t, test_t = np.quantile(t, fractions, method="lower")
    split[t > val_t] = 1
    split[t > test_t] = 2
    return split


def sha256_files(paths: list[str | os.PathLike]) -> str:
    """SHA-256 over the concatenated bytes of the input files (their order matters)."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _write_array(group: h5py.Group, name: str, data: np.ndarray) -> None:
    data = np.ascontiguousarray(data)
    kwargs: dict[str, Any] = {}
    if data.size:
        # No compression: lzf halves the integer arrays but makes every later read 15x slower
        # (measured: 0.35 s vs 0.02 s for 96 MB), and every stage reads the whole store.
        if data.ndim == 2 and data.shape[1] > 0:
            rows = max(1, min(len(data), (1 << 22) // max(1, data.shape[1] * data.itemsize)))
            kwargs = dict(chunks=(rows, data.shape[1]))
    group.create_dataset(name, data=data, **kwargs)


def write_graph(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` atomically to ``path``; a failed write (full disk...) leaves no file there."""
    try:
        _write_graph(graph, path)
    except OSError as exc:  # atomic_path has removed the partial file by now
        if exc.errno == errno.ENOSPC or "No space left on device" in str(exc):
            raise DataError(path, f"no space left on device writing {path}") from None
        raise DataError(path, f"cannot write the graph store ({exc})") from None


def _write_graph(graph: Graph, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        ev = f.create_group("events")
        _write_array(ev, "src", graph.src.astype(np.int64))
        _write_array(ev, "dst", graph.dst.astype(np.int64))
        _write_array(ev, "t", graph.t.astype(np.float64))
        _write_array(ev, "split", graph.split.astype(np.int8))
        if graph.label is not None:
            _write_array(ev, "label", graph.label)
        _write_array(f, "edge_feat", graph.edge_feat.astype(np.float32))
        if graph.node_feat is not None:
            _write_array(f, "node_feat", graph.node_feat.astype(np.float32))
        tg = f.create_group("tcsr")
        for name in ("indptr", "nbr", "t", "eid"):
            _write_array(tg, name, getattr(graph.tcsr, name))
        nm = f.create_group("node_map")
        if graph.original_id is not None:
            oid = graph.original_id
            if oid.dtype.kind in "OUS":
                oid = np.asarray(oid, dtype=object).astype(str).astype(h5py.string_dtype())
            nm.create_dataset("original_id", data=oid)
        if graph.side is not None:
            nm.create_dataset("side", data=graph.side.astype(np.int8))
        attrs = dict(graph.attrs)
        attrs.update(num_nodes=int(graph.num_nodes), num_events=int(graph.num_events),
                     bipartite=bool(graph.bipartite), format_version=FORMAT_VERSION)
        attrs.setdefault("directed", False)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value


def _open(path: str | os.PathLike) -> h5py.File:
    if not Path(path).exists():
        raise DataError(path, "graph file does not exist (run `disttgl convert` or `disttgl synth` first)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not a readable HDF5 graph store ({exc})") from None
    if "events" not in f or "tcsr" not in f or "edge_feat" not in f:
        f.close()
        raise DataError(path, "not a disttgl graph store (missing events/, tcsr/ or edge_feat)")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        f.close()
        raise DataError(path, f"graph store format version {version}, this disttgl reads {FORMAT_VERSION}; "
                              "re-run the conversion")
    return f


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    with _open(path) as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def _attr(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def load_graph(path: str | os.PathLike, *, features: bool = True) -> Graph:
    """Read the whole store into memory (``features=False`` skips edge/node features)."""
    with _open(path) as f:
        ev = f["events"]
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        tcsr = TCSR(**{k: f["tcsr"][k][()] for k in ("indptr", "nbr", "t", "eid")})
        edge_feat = f["edge_feat"][()] if features else np.zeros((len(ev["src"]) + 1, 0), np.float32)
        nm = f["node_map"]
        oid = nm["original_id"][()] if "original_id" in nm else None
        if oid is not None and oid.dtype.kind == "O":
            oid = oid.astype(str)
        return Graph(
            src=ev["src"][()], dst=ev["dst"][()], t=ev["t"][()], split=ev["split"][()],
            num_nodes=int(attrs["num_nodes"]), bipartite=bool(attrs["bipartite"]),
            edge_feat=edge_feat, tcsr=tcsr,
            node_feat=f["node_feat"][()] if features and "node_feat" in f else None,
            label=ev["label"][()] if "label" in ev else None,
            original_id=oid, side=nm["side"][()] if "side" in nm else None, attrs=attrs)


def load_tcsr(path: str | os.PathLike) -> TCSR:
    with _open(path) as f:
        return TCSR(**{k: f["tcsr"][k][()] for k in ("indptr", "nbr", "t", "eid")})


def graph_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for ``disttgl info``: the documented keys first, provenance after."""
    with _open(path) as f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        ev = f["events"]
        t = ev["t"]
        split_counts = np.bincount(ev["split"][()], minlength=3)
        n = len(t)
        node_dim = int(f["node_feat"].shape[1]) if "node_feat" in f else 0
        return {
            "num_events": int(n),
            "num_nodes": int(attrs["num_nodes"]),
            "edge_dim": int(f["edge_feat"].shape[1]),
            "node_dim": node_dim,
            "bipartite": bool(attrs["bipartite"]),
            "splits": {name: int(split_counts[i]) for i, name in enumerate(SPLIT_NAMES)},
            "t_min": float(t[0]) if n else None,
            "t_max": float(t[n - 1]) if n else None,
            "directed": bool(attrs.get("directed", False)),
            "sorted_on_input": bool(attrs.get("sorted_on_input", True)),
            "has_label": "label" in ev,
            "source": attrs.get("source"),
            "sha256": attrs.get("sha256"),
            "split_rule": attrs.get("split_rule"),
            "format_version": attrs.get("format_version"),
        }
