"""The graph store: one HDF5 file per dataset holding events, features and the T-CSR.

Layout (docs/design.md §3), written once by ``disttgl convert``/``disttgl synth`` and read by every later stage:

- ``events/src``, ``events/dst`` int64 [E]; ``events/t`` float64 [E] (sorted, stable);
  ``events/split`` int8 [E] (0 train, 1 val, 2 test); optional ``events/label``: [E] one class per
  event, or uint8 [E, C] a 0/1 row per event (multi-label: several classes each, docs/design.md §13.1).
- ``edge_feat`` float32 [E + 1, d_e]: row E is all zeros, the "no message yet" sentinel.
- ``node_feat`` float32 [N, d_v] when present.
- ``tcsr/indptr`` int64 [N + 1], ``tcsr/nbr``, ``tcsr/eid`` int64 [nnz], ``tcsr/t`` float64 [nnz]:
  per-node adjacency sorted by (t, eid); both directions unless the graph is stored directed-only.
- ``node_map/original_id`` [N] (the id each node had in the input) and, for bipartite graphs,
  ``node_map/side`` int8 [N] (0 user/source side, 1 item/destination side).
- attributes: num_nodes, num_events, bipartite, directed, source, sha256, sorted_on_input,
  split_rule, format_version.
- every numeric dataset carries a ``crc32`` attribute (of its bytes as written); stores written
  before it was added lack it, stay readable, and are checked by the invariants alone.

The in-memory :class:`~disttgl.data.graph.Graph` it holds is defined in :mod:`disttgl.data.graph`.
Every open checks shapes against the attributes; :func:`load_graph` also checks the checksums and the
invariants above (:func:`check_graph`), so a damaged store fails at once with a message naming it,
not with a traceback or a cache built from garbage several stages later.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from disttgl import FORMAT_VERSION
from disttgl.atomic import atomic_path
from disttgl.data.graph import SPLIT_NAMES, TCSR, Graph
from disttgl.errors import DataError


def sha256_files(paths: list[str | os.PathLike]) -> str:
    """SHA-256 over the concatenated bytes of the input files (their order matters)."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _crc(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8))


def _write_array(group: h5py.Group, name: str, data: np.ndarray) -> None:
    data = np.ascontiguousarray(data)
    kwargs: dict[str, Any] = {}
    if data.size:
        # No compression: lzf halves the integer arrays but makes every later read 15x slower
        # (measured: 0.35 s vs 0.02 s for 96 MB), and every stage reads the whole store.
        if data.ndim == 2 and data.shape[1] > 0:
            rows = max(1, min(len(data), (1 << 22) // max(1, data.shape[1] * data.itemsize)))
            kwargs = dict(chunks=(rows, data.shape[1]))
    group.create_dataset(name, data=data, **kwargs).attrs["crc32"] = _crc(data)


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
        # copy=False: a large stream's arrays are written as they are, not copied first
        _write_array(ev, "src", graph.src.astype(np.int64, copy=False))
        _write_array(ev, "dst", graph.dst.astype(np.int64, copy=False))
        _write_array(ev, "t", graph.t.astype(np.float64, copy=False))
        _write_array(ev, "split", graph.split.astype(np.int8, copy=False))
        if graph.label is not None:  # a multi-label matrix as uint8 0/1
            multi = graph.label.ndim == 2
            _write_array(ev, "label", graph.label.astype(np.uint8, copy=False) if multi else graph.label)
        _write_array(f, "edge_feat", graph.edge_feat.astype(np.float32, copy=False))
        if graph.node_feat is not None:
            _write_array(f, "node_feat", graph.node_feat.astype(np.float32, copy=False))
        tg = f.create_group("tcsr")
        for name in ("indptr", "nbr", "t", "eid"):
            _write_array(tg, name, getattr(graph.tcsr, name))
        nm = f.create_group("node_map")
        if graph.original_id is not None:
            oid = graph.original_id
            if oid.dtype.kind in "OUS":
                oid = np.asarray(oid, dtype=object).astype(str).astype(h5py.string_dtype())
                nm.create_dataset("original_id", data=oid)
            else:
                _write_array(nm, "original_id", oid)
        if graph.side is not None:
            _write_array(nm, "side", graph.side.astype(np.int8))
        attrs = dict(graph.attrs)
        attrs.update(num_nodes=int(graph.num_nodes), num_events=int(graph.num_events),
                     bipartite=bool(graph.bipartite), format_version=FORMAT_VERSION)
        attrs.setdefault("directed", False)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value


_REBUILD = "rebuild it with `disttgl convert` (or `disttgl synth`)"
_EVENT_ARRAYS = ("events/src", "events/dst", "events/t", "events/split")
_TCSR_ARRAYS = ("indptr", "nbr", "t", "eid")
_REQUIRED = (*_EVENT_ARRAYS, *(f"tcsr/{k}" for k in _TCSR_ARRAYS))


def _corrupt(path: str | os.PathLike | None, problem: str) -> DataError:
    return DataError(path, f"corrupt graph store: {problem}; {_REBUILD}")


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open the store and check its layout against its attributes (metadata only, no array reads)."""
    if not Path(path).exists():
        raise DataError(path, "graph file does not exist (run `disttgl convert` or `disttgl synth` first)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not a readable HDF5 graph store ({exc})") from None
    try:
        with f:
            _check_layout(path, f)
            yield f
    except (OSError, KeyError, RuntimeError) as exc:
        # damaged bytes inside a file that still opens: h5py fails in whichever read meets them
        raise DataError(path, f"corrupt or truncated graph store ({exc}); {_REBUILD}") from None


def _check_layout(path: str | os.PathLike, f: h5py.File) -> None:
    if "events" not in f or "tcsr" not in f or "edge_feat" not in f:
        raise DataError(path, "not a disttgl graph store (missing events/, tcsr/ or edge_feat)")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DataError(path, f"graph store format version {version}, this disttgl reads {FORMAT_VERSION}; "
                              "re-run the conversion")
    for key in ("num_nodes", "num_events", "bipartite"):
        if key not in f.attrs:
            raise _corrupt(path, f"attribute {key} is missing")
    n, e = int(f.attrs["num_nodes"]), int(f.attrs["num_events"])
    nnz = e if bool(f.attrs.get("directed", False)) else 2 * e
    # name -> (shape, dtype kinds); one lookup each, as every h5py lookup costs tens of microseconds
    want = {"events/src": ((e,), "iu"), "events/dst": ((e,), "iu"), "events/t": ((e,), "f"),
            "events/split": ((e,), "iu"), "tcsr/indptr": ((n + 1,), "iu"), "tcsr/nbr": ((nnz,), "iu"),
            "tcsr/t": ((nnz,), "f"), "tcsr/eid": ((nnz,), "iu"), "events/label": ((e,), None),
            "node_map/original_id": ((n,), None), "node_map/side": ((n,), "iu")}
    for name, (shape, kinds) in want.items():
        ds = f.get(name)
        if ds is None and name in _REQUIRED:
            raise _corrupt(path, f"{name} is missing or unreadable")
        if ds is None:
            continue
        if name == "events/label" and isinstance(ds, h5py.Dataset) and ds.ndim == 2:
            shape, kinds = (e, ds.shape[1]), "uib"  # multi-label: a 0/1 row per event
        if not isinstance(ds, h5py.Dataset) or ds.shape != shape:
            raise _corrupt(path, f"{name} has shape {getattr(ds, 'shape', None)}, expected {shape} ({n} nodes, "
                                 f"{e} events{', directed' if nnz == e else ''})")
        if kinds is not None and ds.dtype.kind not in kinds:
            raise _corrupt(path, f"{name} has dtype {ds.dtype}")
    ef = f["edge_feat"]
    if not isinstance(ef, h5py.Dataset) or ef.ndim != 2 or ef.shape[0] != e + 1:
        raise _corrupt(path, f"edge_feat has shape {getattr(ef, 'shape', None)}, expected ({e + 1}, d): one "
                             "row per event plus the zero sentinel")
    nf = f.get("node_feat")
    if nf is not None and (not isinstance(nf, h5py.Dataset) or nf.ndim != 2 or nf.shape[0] != n):
        raise _corrupt(path, f"node_feat has shape {getattr(nf, 'shape', None)}, expected ({n}, d)")


def _read(path: str | os.PathLike, f: h5py.File, name: str) -> np.ndarray:
    """Read a dataset whole and check it against the crc32 stored when it was written."""
    ds = f[name]
    data = ds[()]
    crc = ds.attrs.get("crc32")
    if crc is not None and _crc(data) != int(crc):
        raise _corrupt(path, f"{name} fails its checksum (its bytes changed after it was written)")
    return data


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


# The checks read arrays CHECK_CHUNK entries at a time, so their temporaries stay small and a
# memory-mapped store (disttgl.data.graph_map) is checked without being read into memory.
CHECK_CHUNK = 1 << 22


def _spans(n: int, chunk: int | None = None) -> Iterator[tuple[int, int]]:
    step = max(int(chunk or CHECK_CHUNK), 1)
    return ((a, min(a + step, n)) for a in range(0, n, step))


def _check_ids(path: str | os.PathLike | None, name: str, ids: np.ndarray, hi: int, what: str,
               chunk: int | None = None) -> None:
    for a, b in _spans(len(ids), chunk):
        part = ids[a:b]
        if part.min() < 0 or part.max() >= hi:
            i = a + _first_bad((part < 0) | (part >= hi))
            raise _corrupt(path, f"{name}[{i}] is {ids[i]}, {what} must lie in [0, {hi})")


def _first_descent(x: np.ndarray, chunk: int | None) -> int | None:
    """The first i with x[i + 1] < x[i], or None."""
    for a, b in _spans(len(x) - 1, chunk):
        down = x[a + 1:b + 1] < x[a:b]
        if down.any():
            return a + _first_bad(down)
    return None


def _check_times(path: str | os.PathLike | None, t: np.ndarray, chunk: int | None = None) -> None:
    for a, b in _spans(len(t), chunk):
        bad = ~np.isfinite(t[a:b])
        if bad.any():
            i = a + _first_bad(bad)
            raise _corrupt(path, f"events/t[{i}] is {t[i]}, times must be finite")
    i = _first_descent(t, chunk)
    if i is not None:
        raise _corrupt(path, f"events/t is not sorted: t[{i + 1}] = {t[i + 1]} < t[{i}] = {t[i]}")


def _check_split(path: str | os.PathLike | None, split: np.ndarray, chronological: bool,
                 chunk: int | None = None) -> None:
    for a, b in _spans(len(split), chunk):
        part = split[a:b]
        if part.min() < 0 or part.max() > 2:
            i = a + _first_bad((part < 0) | (part > 2))
            raise _corrupt(path, f"events/split[{i}] is {split[i]}, splits are 0 (train), 1 (val), 2 (test)")
    # only the chronological rule promises train, then val, then test; a source's ext_roll may interleave
    i = _first_descent(split, chunk) if chronological else None
    if i is not None:
        raise _corrupt(path, f"events/split goes back from {split[i]} to {split[i + 1]} at event {i + 1}, "
                             "but the chronological split is train, then val, then test")


def _check_tcsr(path: str | os.PathLike | None, tc: TCSR, num_nodes: int, num_events: int,
                directed: bool, chunk: int | None = None) -> None:
    indptr, nnz = np.asarray(tc.indptr), len(tc.nbr)
    if nnz != (num_events if directed else 2 * num_events):
        raise _corrupt(path, f"the T-CSR holds {nnz} entries for {num_events} events "
                             f"({'directed' if directed else 'both directions'})")
    if indptr[0] != 0 or indptr[-1] != nnz or not (indptr[1:] >= indptr[:-1]).all():
        raise _corrupt(path, f"tcsr/indptr is not a non-decreasing run from 0 to {nnz}")
    _check_ids(path, "tcsr/nbr", tc.nbr, num_nodes, "node ids", chunk)
    _check_ids(path, "tcsr/eid", tc.eid, num_events, "event ids", chunk)
    starts = indptr[1:-1]  # entry s - 1 > entry s is allowed where row s starts
    for a, b in _spans(nnz - 1, chunk):
        down = tc.t[a + 1:b + 1] < tc.t[a:b]  # down[j]: entry a + j + 1 below entry a + j
        if down.any():
            new_row = starts[np.searchsorted(starts, a + 1):np.searchsorted(starts, b + 1)]
            down[new_row - 1 - a] = False
            if down.any():
                i = a + _first_bad(down) + 1
                raise _corrupt(path, f"tcsr/t is not sorted within node {int(np.searchsorted(indptr, i, 'right')) - 1}'s"
                                     f" row (entry {i})")


def check_graph(graph: Graph, path: str | os.PathLike | None = None, *, edge_feat: bool = True,
                chunk: int | None = None) -> None:
    """Check the store's invariants on ``graph`` (vectorised: a few passes over each array, ``chunk``
    entries at a time, default :data:`CHECK_CHUNK`; the arrays may be memory maps).

    ``edge_feat=False`` skips the edge-feature sentinel row (``load_graph(features=False)`` checks it
    in the file instead)."""
    n, e = graph.num_nodes, graph.num_events
    _check_ids(path, "events/src", graph.src, n, "node ids", chunk)
    _check_ids(path, "events/dst", graph.dst, n, "node ids", chunk)
    _check_times(path, graph.t, chunk)
    _check_split(path, graph.split, graph.attrs.get("split_rule") == "chronological", chunk)
    if edge_feat and graph.edge_feat.shape[0] == e + 1 and graph.edge_feat[-1].any():
        raise _corrupt(path, "the last row of edge_feat (the 'no message yet' sentinel) is not zero")
    directed = bool(graph.attrs.get("directed", False))
    _check_tcsr(path, graph.tcsr, n, e, directed, chunk)
    # each entry is one of its event's endpoints at its event's time
    tc = graph.tcsr
    for a, b in _spans(len(tc.eid), chunk):
        wrong = tc.t[a:b] != graph.t[np.asarray(tc.eid[a:b])]
        if wrong.any():
            i = a + _first_bad(wrong)
            raise _corrupt(path, f"tcsr/t[{i}] is not the time of its event tcsr/eid[{i}]")
    if graph.side is not None and len(graph.side) and (graph.side.min() < 0 or graph.side.max() > 1):
        raise _corrupt(path, "node_map/side holds values other than 0 and 1")
    if graph.label is not None and np.ndim(graph.label) == 2:
        _check_multilabel(path, graph.label, chunk)


def _check_multilabel(path: str | os.PathLike | None, label: np.ndarray, chunk: int | None) -> None:
    """A multi-label ``events/label`` [E, C] holds 0 and 1 only."""
    rows = max(1, (chunk or CHECK_CHUNK) // max(1, label.shape[1]))
    for a, b in _spans(len(label), rows):
        part = np.asarray(label[a:b])
        wrong = ((part != 0) & (part != 1)).any(1)
        if wrong.any():
            raise _corrupt(path, f"events/label row {a + _first_bad(wrong)} holds values other than 0 and 1 "
                                 "(a multi-label row is 0/1 per class)")


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
    """Read the whole store into memory (``features=False`` skips edge/node features), checked
    against its checksums and invariants: a DataError naming the file if anything is off."""
    with _open(path) as f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        tcsr = TCSR(**{k: _read(path, f, f"tcsr/{k}") for k in _TCSR_ARRAYS})
        e = int(attrs["num_events"])
        if features:
            edge_feat = _read(path, f, "edge_feat")
        else:
            if f["edge_feat"].shape[1] and f["edge_feat"][e].any():
                raise _corrupt(path, "the last row of edge_feat (the 'no message yet' sentinel) is not zero")
            edge_feat = np.zeros((e + 1, 0), np.float32)
        nm = f["node_map"] if "node_map" in f else {}
        oid = _read(path, f, "node_map/original_id") if "original_id" in nm else None
        if oid is not None and oid.dtype.kind == "O":
            oid = oid.astype(str)
        graph = Graph(
            src=_read(path, f, "events/src"), dst=_read(path, f, "events/dst"), t=_read(path, f, "events/t"),
            split=_read(path, f, "events/split"),
            num_nodes=int(attrs["num_nodes"]), bipartite=bool(attrs["bipartite"]),
            edge_feat=edge_feat, tcsr=tcsr,
            node_feat=_read(path, f, "node_feat") if features and "node_feat" in f else None,
            label=_read(path, f, "events/label") if "label" in f["events"] else None,
            original_id=oid, side=_read(path, f, "node_map/side") if "side" in nm else None, attrs=attrs)
    check_graph(graph, path, edge_feat=features)
    return graph


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray | None, np.ndarray]:
    """(``events/label`` or None, ``events/split``) alone, checksummed: what edge classification
    checks before a run starts, without reading the rest of the store."""
    with _open(path) as f:
        label = _read(path, f, "events/label") if "label" in f["events"] else None
        return label, _read(path, f, "events/split")


def load_tcsr(path: str | os.PathLike) -> TCSR:
    with _open(path) as f:
        tcsr = TCSR(**{k: _read(path, f, f"tcsr/{k}") for k in _TCSR_ARRAYS})
        _check_tcsr(path, tcsr, int(f.attrs["num_nodes"]), int(f.attrs["num_events"]),
                    bool(f.attrs.get("directed", False)))
        return tcsr


def graph_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for ``disttgl info``: the documented keys first, provenance after."""
    with _open(path) as f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        ev = f["events"]
        t = _read(path, f, "events/t")
        split = _read(path, f, "events/split")
        _check_times(path, t)
        _check_split(path, split, attrs.get("split_rule") == "chronological")
        split_counts = np.bincount(split, minlength=3)
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
