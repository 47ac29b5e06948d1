"""``disttgl batches``: precompute every mini-batch once into ONE HDF5 cache, and read it back.

Layout (per split group ``train``/``val``/``test``; ``I`` is int32 when node and event ids fit):

- ``/event_t`` float64 [E + 1]: every event's time, 0 for the sentinel E. Times the batches need
  (``mem_t``, ``mail_t``, neighbour ``dt``) are stored as event ids and looked up here on load,
  which halves the node tables and removes the per-neighbour float column.
- ``events`` int64 [n, 3] (eid, src, dst) and ``t`` float64 [n]: the split's positives in batch
  order; batch b is rows ``event_ptr[b]:event_ptr[b+1]``.
- Positive part, stored once per batch (roots ``[src | dst]``):
  ``pos_root`` I [2n, 3] (root_idx, write_mask, neighbour count) at rows ``2*event_ptr``;
  ``pos_node`` I [*, 3] (node, mail_eid, mem_eid) at ``pos_node_ptr``: the batch's unique nodes
  (sorted) with the bookkeeping before its memory batch;
  ``pos_nbr`` I [*, 2] (node index, eid) at ``pos_nbr_ptr``, root by root (a neighbour's root is
  implied by the roots' counts), most recent first.
- Negative part, one segment per (batch b, negative set s) at ``seg = b * S + s`` so a batch with
  one set is two contiguous reads: ``neg_root`` I [*, 3] (node, root_idx, count), ``neg_node``
  (the unique nodes of the segment that are NOT in the positive part; their indices continue after
  the positive part's) and ``neg_nbr``, each with its ``*_ptr`` [nb * S + 1]. Train has
  S = ``neg_sets`` with 1 negative per positive; val/test have S = 1 with ``eval_negatives`` each.

So ``Batch.nodes = pos_node ++ neg_node[seg]`` and all indices are precomputed: loading is slicing
plus a few gathers. Datasets are contiguous (unchunked, unfiltered), so the reader memory-maps
them with no HDF5 call per read. ``pos_crc`` [nb] and ``neg_crc`` [nb * S] hold a CRC-32 of each
part's bytes, checked on every read: corrupt bytes raise :class:`DataError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import tempfile
import threading
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np
import torch

from disttgl.atomic import atomic_path
from disttgl.cache.batch import Batch
from disttgl.cache.memory_clock import ClockState, plan
from disttgl.errors import DataError
from disttgl.data.graph_store import SPLIT_NAMES, load_graph, read_attrs
from disttgl.cache.sampling import SamplerIndex, negative_candidates, prepare, sample_negatives, sample_neighbors

log = logging.getLogger(__name__)

CACHE_KIND = "disttgl-batches"
_PARTS = {  # dataset -> (pointer dataset, columns or 0 for 1-D, dtype or None for the index dtype)
    "events": ("event_ptr", 3, "int64"), "t": ("event_ptr", 0, "float64"),
    "pos_root": (None, 3, None), "pos_node": ("pos_node_ptr", 3, None), "pos_nbr": ("pos_nbr_ptr", 2, None),
    "neg_root": ("neg_root_ptr", 3, None), "neg_node": ("neg_node_ptr", 3, None),
    "neg_nbr": ("neg_nbr_ptr", 2, None),
}
_PTRS = ("event_ptr", "pos_node_ptr", "pos_nbr_ptr", "neg_root_ptr", "neg_node_ptr", "neg_nbr_ptr")
_POS = ("events", "t", "pos_root", "pos_node", "pos_nbr")
_NEG = ("neg_root", "neg_node", "neg_nbr")

# 2: validation and test batches are never grouped by i (one evaluation protocol for every layout);
# a version-1 cache built with i > 1 holds grouped val/test bookkeeping and must be rebuilt.
CACHE_FORMAT_VERSION = 2


def _crc(parts: Iterable[np.ndarray]) -> int:
    c = 0
    for a in parts:
        c = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), c)
    return c


@dataclass(frozen=True)
class BatchParams:
    batch_size: int = 600
    minibatch_parallelism: int = 1
    neg_sets: int = 32
    eval_negatives: int = 49
    neighbors: int = 10
    strategy: str = "recent"
    seed: int = 0
    tgl_compat: bool = False

    def check(self) -> None:
        for name in ("batch_size", "minibatch_parallelism", "neg_sets", "eval_negatives"):
            if getattr(self, name) < 1:
                raise DataError(None, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.neighbors < 0:
            raise DataError(None, f"--neighbors must be >= 0, got {self.neighbors}")
        if self.strategy not in ("recent", "uniform"):
            raise DataError(None, f"--strategy must be recent or uniform, got {self.strategy!r}")


@dataclass(frozen=True)
class CacheMeta(BatchParams):
    graph_sha256: str = ""
    num_nodes: int = 0
    num_events: int = 0
    split_events: dict[str, int] = field(default_factory=dict)  # positives per split
    split_batches: dict[str, int] = field(default_factory=dict)  # batches per split
    format_version: int = CACHE_FORMAT_VERSION


# ----------------------------------------------------------------------------------- building

def _segments(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


class BatchSampler:
    """Samples one batch's positive and negative parts (numpy arrays, as the cache stores them)."""

    def __init__(self, index: SamplerIndex, params: BatchParams, num_nodes: int, num_events: int,
                 candidates: np.ndarray | None, itype: np.dtype):
        self.index, self.p, self.n, self.e = index, params, num_nodes, num_events
        self.candidates, self.itype = candidates, itype
        self.slot = np.full(num_nodes, -1, dtype=np.int64)  # node -> index in the positive part

    def _rng(self, split: int, b: int, part: int) -> np.random.Generator:
        # One stream per (split, batch, part): any batch can be rebuilt alone, in any order.
        return np.random.default_rng([self.p.seed, split, b, part])

    def _neighbours(self, nodes: np.ndarray, times: np.ndarray, rng: np.random.Generator):
        nbr, eid, _ = sample_neighbors(self.index, nodes, times, self.p.neighbors, strategy=self.p.strategy,
                                       rng=rng, tgl_compat=self.p.tgl_compat)
        valid = nbr >= 0  # valid slots are a prefix of each row (most recent first)
        return np.nonzero(valid)[0], valid.sum(1), nbr[valid], eid[valid]

    def batch(self, split: int, b: int, eids: np.ndarray, src: np.ndarray, dst: np.ndarray, t: np.ndarray,
              mask: np.ndarray, state: ClockState, num_sets: int, q: int) -> dict[str, np.ndarray]:
        nb = len(eids)
        it = self.itype
        out: dict[str, Any] = {"events": np.stack([eids, src, dst], 1), "t": t}
        # positive part
        roots = np.concatenate([src, dst])
        rtimes = np.concatenate([t, t])
        _, cnt, nbr, neid = self._neighbours(roots, rtimes, self._rng(split, b, 0))
        pos_nodes = np.unique(np.concatenate([roots, nbr]))
        self.slot[pos_nodes] = np.arange(len(pos_nodes))
        out["pos_root"] = np.stack([self.slot[roots], mask, cnt], 1).astype(it)
        out["pos_node"] = np.stack([pos_nodes, state.mail_eid[pos_nodes], state.mem_eid[pos_nodes]], 1).astype(it)
        out["pos_nbr"] = np.stack([self.slot[nbr], neid], 1).astype(it)
        # negative part: all sets at once; row r of the [S * nb * q] roots is set r // (nb * q)
        rng = self._rng(split, b, 1)
        neg = sample_negatives(rng, (num_sets, nb, q), self.n, self.candidates).reshape(-1)
        ntimes = np.tile(np.repeat(t, q), num_sets)
        rows, cnt, nbr, neid = self._neighbours(neg, ntimes, rng)
        per_set = nb * q
        nbr_set = rows // per_set
        # unique extra nodes per set, keyed set * N + node so one np.unique serves all sets
        keyed = np.concatenate([_segments(np.full(num_sets, per_set)) * self.n + neg, nbr_set * self.n + nbr])
        keyed = np.unique(keyed)
        keyed = keyed[self.slot[keyed % self.n] < 0]
        extra_set, extra_node = np.divmod(keyed, self.n)
        extra_counts = np.bincount(extra_set, minlength=num_sets)
        extra_start = np.concatenate([[0], np.cumsum(extra_counts)[:-1]])

        def index_of(nodes: np.ndarray, sets: np.ndarray) -> np.ndarray:
            idx = self.slot[nodes]
            new = idx < 0
            k = sets[new] * self.n + nodes[new]
            idx[new] = len(pos_nodes) + np.searchsorted(keyed, k) - extra_start[sets[new]]
            return idx

        neg_set = _segments(np.full(num_sets, per_set))
        out["neg_root"] = np.stack([neg, index_of(neg, neg_set), cnt], 1).astype(it)
        out["neg_node"] = np.stack([extra_node, state.mail_eid[extra_node], state.mem_eid[extra_node]],
                                   1).astype(it)
        out["neg_nbr"] = np.stack([index_of(nbr, nbr_set), neid], 1).astype(it)
        out["_counts"] = {"neg_root": np.full(num_sets, per_set), "neg_node": extra_counts,
                          "neg_nbr": np.bincount(nbr_set, minlength=num_sets)}
        self.slot[pos_nodes] = -1
        return out


class _Writer:
    """Spools one split's per-batch arrays to temporary files, then copies each into a contiguous
    dataset of known size (resizable datasets would have to be chunked, hence slow to slice)."""

    def __init__(self, group: h5py.Group, itype: np.dtype, tmpdir: str | os.PathLike):
        self.g, self.itype = group, itype
        self.ptrs: dict[str, list[int]] = {p: [0] for p in _PTRS}
        self.spool = {k: tempfile.TemporaryFile(dir=tmpdir) for k in _PARTS}
        self.rows = {k: 0 for k in _PARTS}
        self.crc: dict[str, list[int]] = {"pos_crc": [], "neg_crc": []}

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(_PARTS[name][2]) if _PARTS[name][2] else self.itype

    def add(self, arrays: dict[str, Any]) -> None:
        counts = arrays.pop("_counts")
        arrays = {k: np.ascontiguousarray(v, dtype=self._dtype(k)) for k, v in arrays.items()}
        for name, a in arrays.items():
            self.spool[name].write(memoryview(a.view(np.uint8).reshape(-1)))
            self.rows[name] += len(a)
        p = self.ptrs
        p["event_ptr"].append(p["event_ptr"][-1] + len(arrays["t"]))
        p["pos_node_ptr"].append(p["pos_node_ptr"][-1] + len(arrays["pos_node"]))
        p["pos_nbr_ptr"].append(p["pos_nbr_ptr"][-1] + len(arrays["pos_nbr"]))
        self.crc["pos_crc"].append(_crc(arrays[k] for k in _POS))
        bounds = {}  # pointer name -> per-set row bounds inside this batch's negative arrays
        for part in ("neg_root", "neg_node", "neg_nbr"):
            bounds[part + "_ptr"] = np.concatenate([[0], np.cumsum(counts[part])])
            p[part + "_ptr"].extend((p[part + "_ptr"][-1] + bounds[part + "_ptr"][1:]).tolist())
        for s in range(len(counts["neg_root"])):
            self.crc["neg_crc"].append(_crc(arrays[k][bounds[_PARTS[k][0]][s]:bounds[_PARTS[k][0]][s + 1]]
                                            for k in _NEG))

    def close(self, num_sets: int, q: int) -> None:
        for name, (_, cols, _) in _PARTS.items():
            dtype, fh = self._dtype(name), self.spool[name]
            shape = (self.rows[name], cols) if cols else (self.rows[name],)
            d = self.g.create_dataset(name, shape=shape, dtype=dtype)
            row_bytes = dtype.itemsize * max(cols, 1)
            step = max(1, (64 << 20) // row_bytes)
            fh.seek(0)
            for r0 in range(0, self.rows[name], step):
                n = min(step, self.rows[name] - r0)
                d[r0:r0 + n] = np.frombuffer(fh.read(n * row_bytes), dtype=dtype).reshape((n,) + shape[1:])
            fh.close()
        for name, values in self.ptrs.items():
            self.g.create_dataset(name, data=np.asarray(values, dtype=np.int64))
        for name, values in self.crc.items():
            self.g.create_dataset(name, data=np.asarray(values, dtype=np.uint32).reshape(-1))
        self.g.attrs.update(num_batches=len(self.ptrs["event_ptr"]) - 1, neg_sets=num_sets, negatives=q)


def build_cache(graph_path: str | os.PathLike, out: str | os.PathLike, params: BatchParams, *,
                progress: bool = True) -> CacheMeta:
    """Sample every batch of ``graph_path`` and write the cache to ``out`` atomically."""
    params.check()
    from tqdm import tqdm

    graph = load_graph(graph_path, features=False)
    n, e = graph.num_nodes, graph.num_events
    itype = np.dtype(np.int32 if max(n, e + 1, 2 * params.batch_size * (2 + max(params.eval_negatives, 1)))
                     < 2 ** 31 - 1 else np.int64)
    index = prepare(graph.tcsr, pad=max(params.neighbors, 1))
    cands = negative_candidates(n, graph.dst, graph.bipartite)
    sampler = BatchSampler(index, params, n, e, cands, itype)
    counts = np.bincount(graph.split, minlength=3)
    meta = CacheMeta(**asdict(params), graph_sha256=str(graph.attrs.get("sha256", "")), num_nodes=n,
                     num_events=e, split_events={s: int(c) for s, c in zip(SPLIT_NAMES, counts)},
                     split_batches={s: int(-(-c // params.batch_size)) for s, c in zip(SPLIT_NAMES, counts)})
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f, \
            tqdm(total=sum(meta.split_batches.values()), unit="batch", disable=not progress,
                 desc="batches") as bar:
        writers = {}
        for grp, state in plan(graph.src, graph.dst, graph.t, graph.split, params.batch_size,
                               params.minibatch_parallelism, n):
            for pb in grp:
                name = SPLIT_NAMES[pb.split]
                num_sets, q = (params.neg_sets, 1) if pb.split == 0 else (1, params.eval_negatives)
                if name not in writers:
                    writers[name] = (_Writer(f.create_group(name), itype, tmp.parent), num_sets, q)
                ev = pb.eids
                writers[name][0].add(sampler.batch(pb.split, pb.index, ev, graph.src[ev], graph.dst[ev],
                                                   graph.t[ev], pb.write_mask, state, num_sets, q))
                bar.update()
        for name in SPLIT_NAMES:
            if name not in writers:  # an empty split still gets its (empty) group
                num_sets, q = (params.neg_sets, 1) if name == "train" else (1, params.eval_negatives)
                writers[name] = (_Writer(f.create_group(name), itype, tmp.parent), num_sets, q)
            w, num_sets, q = writers[name]
            w.close(num_sets, q)
        event_t = np.concatenate([graph.t, [0.0]]).astype(np.float64)
        f.create_dataset("event_t", data=event_t).attrs["crc32"] = _crc([event_t])
        f.attrs["kind"] = CACHE_KIND
        f.attrs["meta"] = json.dumps(asdict(meta), sort_keys=True)
        f.attrs["format_version"] = CACHE_FORMAT_VERSION
        f.attrs["complete"] = True  # written last: a file without it was never finished
    return meta


# ------------------------------------------------------------------------------------ reading

class BatchCache:
    """Read access to a batch cache; ``batch(split, b, neg_set)`` returns a CPU :class:`Batch`.

    The arrays are memory-mapped views of the file, so open it in the process that reads it.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True):
        self.path = Path(path)
        self.verify = verify
        if not self.path.exists():
            raise DataError(path, "batch cache does not exist (run `disttgl batches` first)")
        try:
            with h5py.File(self.path, "r") as f:
                self.meta = self._read_meta(f)
                self._layout = {s: self._read_split(f, s) for s in SPLIT_NAMES}
                event_t = f["event_t"]
                if event_t.chunks is not None or event_t.shape != (self.meta.num_events + 1,):
                    raise DataError(path, f"corrupt batch cache: event_t has shape {event_t.shape}")
                et_offset, et_crc = event_t.id.get_offset(), int(event_t.attrs["crc32"])
        except OSError as exc:
            raise DataError(path, f"not a readable HDF5 batch cache, truncated or corrupt ({exc})") from None
        except KeyError as exc:
            raise DataError(path, f"corrupt batch cache: missing {exc}") from None
        size = self.path.stat().st_size
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self._data: dict[str, dict[str, np.ndarray]] = {}
        for s, (ptr, _, offsets) in self._layout.items():
            self._data[s] = {}
            for name, (off, shape, dtype) in offsets.items():
                nbytes = int(np.prod(shape)) * dtype.itemsize
                if nbytes and (off is None or off + nbytes > size):
                    raise DataError(path, f"truncated batch cache: {s}/{name} ends past the end of the file")
                self._data[s][name] = (np.ndarray(shape, dtype, buffer=self._mm, offset=off) if nbytes
                                       else np.zeros(shape, dtype))
        if et_offset is None or et_offset + 8 * (self.meta.num_events + 1) > size:
            raise DataError(path, "truncated batch cache: event_t ends past the end of the file")
        self._event_t = np.ndarray((self.meta.num_events + 1,), np.float64, buffer=self._mm, offset=et_offset)
        if verify and _crc([self._event_t]) != et_crc:
            raise DataError(path, "corrupt batch cache: checksum mismatch in event_t")
        self._check_layout()

    def _read_meta(self, f: h5py.File) -> CacheMeta:
        a = f.attrs
        if a.get("kind") != CACHE_KIND:
            raise DataError(self.path, "not a disttgl batch cache")
        version = int(a.get("format_version", -1))
        if version != CACHE_FORMAT_VERSION:
            raise DataError(self.path, f"batch cache format version {version}, this disttgl reads "
                                       f"{CACHE_FORMAT_VERSION}; rebuild it with `disttgl batches`")
        if not a.get("complete", False):
            raise DataError(self.path, "batch cache is incomplete (its build was interrupted); rebuild it")
        try:
            return CacheMeta(**json.loads(a["meta"]))
        except (TypeError, ValueError) as exc:
            raise DataError(self.path, f"unreadable cache metadata ({exc})") from None

    @staticmethod
    def _read_split(f: h5py.File, split: str):
        g = f[split]
        ptr = {p: g[p][()] for p in _PTRS + ("pos_crc", "neg_crc")}
        offsets = {}
        for name in _PARTS:
            d = g[name]
            if d.chunks is not None or d.compression is not None:
                raise DataError(f.filename, f"{split}/{name} is not a contiguous dataset")
            offsets[name] = (d.id.get_offset(), d.shape, d.dtype)
        return ptr, int(g.attrs["neg_sets"]), offsets

    def _check_layout(self) -> None:
        for s in SPLIT_NAMES:
            ptr, sets, _ = self._layout[s]
            data = self._data[s]
            nb = self.meta.split_batches.get(s, 0)
            if len(ptr["event_ptr"]) != nb + 1 or len(ptr["neg_root_ptr"]) != nb * sets + 1 \
                    or len(ptr["pos_crc"]) != nb or len(ptr["neg_crc"]) != nb * sets:
                raise DataError(self.path, f"corrupt batch cache: {s} offsets do not match {nb} batches")
            for name, (pname, _, _) in _PARTS.items():
                rows = 2 * ptr["event_ptr"][-1] if pname is None else ptr[pname][-1]
                if len(data[name]) != rows or (pname and np.any(np.diff(ptr[pname]) < 0)):
                    raise DataError(self.path, f"corrupt batch cache: {s}/{name} has {len(data[name])} rows, "
                                               f"offsets say {rows}")

    def num_batches(self, split: str) -> int:
        return len(self._layout[split][0]["event_ptr"]) - 1

    def num_neg_sets(self, split: str) -> int:
        return self._layout[split][1]

    def arrays(self, split: str, b: int, neg_set: int = 0) -> dict[str, np.ndarray]:
        """The numpy pieces of batch ``b`` (the :class:`Batch` fields, before tensor conversion)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
        nb = self.num_batches(split)
        if not 0 <= b < nb:
            raise IndexError(f"{split} batch {b} out of range (0..{nb - 1})")
        p, sets, _ = self._layout[split]
        if split == "train" and not 0 <= neg_set < sets:
            raise IndexError(f"negative set {neg_set} out of range (0..{sets - 1})")
        seg = b * sets + (neg_set if split == "train" else 0)
        data = self._data[split]
        e0, e1 = p["event_ptr"][b], p["event_ptr"][b + 1]
        x = {}
        for name in _POS:
            pname = _PARTS[name][0]
            lo, hi = (2 * e0, 2 * e1) if pname is None else (p[pname][b], p[pname][b + 1])
            x[name] = data[name][lo:hi]
        for name in _NEG:
            pname = _PARTS[name][0]
            x[name] = data[name][p[pname][seg]:p[pname][seg + 1]]
        if self.verify:
            if _crc(x[k] for k in _POS) != p["pos_crc"][b]:
                raise DataError(self.path, f"corrupt batch cache: checksum mismatch in {split} batch {b} "
                                           "(positive part)")
            if _crc(x[k] for k in _NEG) != p["neg_crc"][seg]:
                raise DataError(self.path, f"corrupt batch cache: checksum mismatch in {split} batch {b} "
                                           f"negative set {seg - b * sets}")
        ev, t, pos_root, pos_node, pos_nbr = (x[k] for k in _POS)
        neg_root, neg_node, neg_nbr = (x[k] for k in _NEG)
        i64 = np.int64
        node = np.concatenate([pos_node, neg_node]).astype(i64)
        nbr = np.concatenate([pos_nbr, neg_nbr]).astype(i64)
        nbr_root = np.repeat(np.arange(len(pos_root) + len(neg_root)), np.concatenate([pos_root[:, 2], neg_root[:, 2]]))
        q = len(neg_root) // max(len(ev), 1)
        root_t = np.concatenate([t, t, np.repeat(t, q)])
        event_t = self._event_t
        return dict(
            eid=ev[:, 0].copy(), t=t.copy(), src=ev[:, 1].copy(), dst=ev[:, 2].copy(),
            neg=neg_root[:, 0].astype(i64).reshape(len(ev), q),
            nodes=node[:, 0].copy(), root_idx=np.concatenate([pos_root[:, 0], neg_root[:, 1]]).astype(i64),
            nbr_root=nbr_root,
            nbr_idx=nbr[:, 0].copy(), nbr_eid=nbr[:, 1].copy(),
            nbr_dt=(root_t[nbr_root] - event_t[nbr[:, 1]]).astype(np.float32),
            mem_t=event_t[node[:, 2]], mail_t=event_t[node[:, 1]], mail_eid=node[:, 1].copy(),
            write_mask=pos_root[:, 1].astype(bool))

    def batch(self, split: str, b: int, neg_set: int = 0) -> Batch:
        """Batch ``b`` of ``split`` with train negative set ``neg_set`` (ignored for val/test)."""
        return Batch(**{k: torch.from_numpy(v) for k, v in self.arrays(split, b, neg_set).items()})

    def close(self) -> None:
        # Dropping the views unmaps the file once no returned array refers to it (batches are copies).
        self._data = {}
        self._mm = np.zeros(0, np.uint8)

    def __enter__(self) -> "BatchCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cache(path: str | os.PathLike, *, graph_path: str | os.PathLike | None = None,
               minibatch_parallelism: int | None = None) -> BatchCache:
    """Open a cache, checking it was built from ``graph_path`` and with ``minibatch_parallelism``."""
    cache = BatchCache(path)
    try:
        m = cache.meta
        if graph_path is not None:
            attrs = read_attrs(graph_path)
            sha = str(attrs.get("sha256", ""))
            if sha != m.graph_sha256 or int(attrs["num_events"]) != m.num_events \
                    or int(attrs["num_nodes"]) != m.num_nodes:
                raise DataError(path, f"batch cache was built from a different graph: cache has sha256 "
                                      f"{m.graph_sha256 or '?'} ({m.num_events} events), {graph_path} has "
                                      f"{sha or '?'} ({attrs['num_events']} events); rebuild the cache")
        if minibatch_parallelism is not None and minibatch_parallelism != m.minibatch_parallelism:
            raise DataError(path, f"batch cache was built for minibatch parallelism i = "
                                  f"{m.minibatch_parallelism}, training asks for i = {minibatch_parallelism}; "
                                  "use the cache built with the same i")
    except BaseException:
        cache.close()
        raise
    return cache


class BatchLoader:
    """Iterate ``items`` = (batch index, negative set) of one split as :class:`Batch`es.

    A background thread reads ahead up to ``prefetch`` batches (optionally moved to ``device``), so
    reading overlaps compute. The HDF5 file is opened lazily by the process that iterates (never
    inherited across fork/spawn); an error in the thread is re-raised to the caller.
    """

    def __init__(self, cache_path: str | os.PathLike, split: str, items: Sequence[tuple[int, int]], *,
                 prefetch: int = 4, device: torch.device | str | None = None,
                 graph_path: str | os.PathLike | None = None, minibatch_parallelism: int | None = None):
        self.cache_path, self.split, self.items = cache_path, split, list(items)
        self.prefetch, self.device = max(1, prefetch), device
        self.graph_path, self.minibatch_parallelism = graph_path, minibatch_parallelism
        self._cache: BatchCache | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _open(self) -> BatchCache:
        if self._cache is None or self._pid != os.getpid():
            self._cache = open_cache(self.cache_path, graph_path=self.graph_path,
                                     minibatch_parallelism=self.minibatch_parallelism)
            self._pid = os.getpid()
        return self._cache

    def __iter__(self) -> Iterator[Batch]:
        cache = self._open()
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()
        device = None if self.device is None else torch.device(self.device)

        def put(x: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(x, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def work() -> None:
            try:
                for b, s in self.items:
                    batch = cache.batch(self.split, int(b), int(s))
                    if device is not None and device.type != "cpu":
                        batch = batch.pin_memory().to(device, non_blocking=True)
                    if not put(batch):
                        return
                put(done)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(exc)

        thread = threading.Thread(target=work, name="disttgl-batch-loader", daemon=True)
        thread.start()
        try:
            while True:
                x = q.get()
                if x is done:
                    return
                if isinstance(x, BaseException):
                    raise x
                yield x
        finally:
            stop.set()
            thread.join()

    def __getstate__(self) -> dict[str, Any]:
        # Sent to another process (spawn, torchrun workers): never ship an open file mapping.
        return {**self.__dict__, "_cache": None, "_pid": None}

    def close(self) -> None:
        if self._cache is not None and self._pid == os.getpid():
            self._cache.close()
        self._cache = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BatchParams()
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("--out", required=True, help="output cache (.h5)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--minibatch-parallelism", "-i", type=int, default=d.minibatch_parallelism,
                        help="i: consecutive batches per memory batch (train with the same i)")
    parser.add_argument("--neg-sets", type=int, default=d.neg_sets, help="train negative sets")
    parser.add_argument("--eval-negatives", type=int, default=d.eval_negatives,
                        help="negatives per positive for val/test")
    parser.add_argument("--neighbors", type=int, default=d.neighbors)
    parser.add_argument("--strategy", choices=("recent", "uniform"), default=d.strategy)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--tgl-compat", action="store_true",
                        help="reproduce TGL's sampler (never returns a node's first edge)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    params = BatchParams(batch_size=args.batch_size, minibatch_parallelism=args.minibatch_parallelism,
                         neg_sets=args.neg_sets, eval_negatives=args.eval_negatives, neighbors=args.neighbors,
                         strategy=args.strategy, seed=args.seed, tgl_compat=args.tgl_compat)
    meta = build_cache(args.graph, args.out, params, progress=not args.no_progress)
    size = Path(args.out).stat().st_size
    log.info("wrote %s: %s batches, %.1f MiB", args.out,
             ", ".join(f"{k} {v}" for k, v in meta.split_batches.items()), size / 2 ** 20)
    return 0
