"""``build_cache``: sample every mini-batch of a graph once and write the batch cache (layout in
:mod:`disttgl.cache.format`).

Out of core (docs/design.md §3.2): the build streams. The store's events and T-CSR are memory maps
(:func:`~disttgl.data.graph_map.map_graph`), searched row by row (:class:`~disttgl.cache.sampling.RowIndex`,
nothing derived from the event count); the memory clock and the sampler's node slots are O(N); the
batches are walked one memory batch at a time (:func:`~disttgl.cache.memory_clock.plan`) and every
batch's arrays go straight to per-dataset spool files on disk, which are copied into the cache's
contiguous datasets 64 MiB at a time at the end. What grows with the stream in memory: the per-batch
offsets and CRCs (8-36 bytes a batch and negative set).
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from array import array
from dataclasses import asdict
from typing import Any

import h5py
import numpy as np

from disttgl.atomic import atomic_path
from disttgl.cache.format import (CACHE_FORMAT_VERSION, CACHE_KIND, NEGATIVE_PARTS, PARTS, POINTERS, POSITIVE_PARTS,
                                  BatchParams, CacheMeta, parts_crc)
from disttgl.cache.memory_clock import ClockState, plan
from disttgl.cache.sampling import RowIndex, SamplerIndex, negative_candidates, sample_negatives, sample_neighbors
from disttgl.data.graph import SPLIT_NAMES
from disttgl.data.graph_map import map_graph
from disttgl.data.graph_store import CHECK_CHUNK


def _segments(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


class BatchSampler:
    """Samples one batch's positive and negative parts (numpy arrays, as the cache stores them)."""

    def __init__(self, index: SamplerIndex | RowIndex, params: BatchParams, num_nodes: int, num_events: int,
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
              mask: np.ndarray, state: ClockState, num_sets: int, q: int,
              negatives: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The batch's cache parts; ``negatives`` [num_sets, nb, q] replaces the drawn ones (TGB's
        evaluation negatives, :mod:`disttgl.tgb.evaluate`)."""
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
        if negatives is None:
            neg = sample_negatives(rng, (num_sets, nb, q), self.n, self.candidates).reshape(-1)
        else:
            neg = np.ascontiguousarray(negatives, dtype=np.int64).reshape(-1)
            if len(neg) != num_sets * nb * q:
                raise ValueError(f"negatives must hold {num_sets} x {nb} x {q} ids, got {len(neg)}")
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
    dataset of known size. Resizable HDF5 datasets would have to be chunked, and the reader
    memory-maps contiguous ones (a chunked dataset's pieces lie anywhere in the file)."""

    def __init__(self, group: h5py.Group, itype: np.dtype, tmpdir: str | os.PathLike):
        self.g, self.itype = group, itype
        # typed arrays, not lists: 8 bytes an offset instead of a Python int each (~36)
        self.ptrs: dict[str, array] = {p: array("q", [0]) for p in POINTERS}
        self.spool = {k: tempfile.TemporaryFile(dir=tmpdir) for k in PARTS}
        self.rows = {k: 0 for k in PARTS}
        self.crc: dict[str, array] = {"pos_crc": array("I"), "neg_crc": array("I")}

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(PARTS[name][2]) if PARTS[name][2] else self.itype

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
        self.crc["pos_crc"].append(parts_crc(arrays[k] for k in POSITIVE_PARTS))
        bounds = {}  # pointer name -> per-set row bounds inside this batch's negative arrays
        for part in ("neg_root", "neg_node", "neg_nbr"):
            bounds[part + "_ptr"] = np.concatenate([[0], np.cumsum(counts[part])])
            p[part + "_ptr"].extend((p[part + "_ptr"][-1] + bounds[part + "_ptr"][1:]).astype(np.int64).tolist())
        for s in range(len(counts["neg_root"])):
            self.crc["neg_crc"].append(parts_crc(arrays[k][bounds[PARTS[k][0]][s]:bounds[PARTS[k][0]][s + 1]]
                                            for k in NEGATIVE_PARTS))

    def close(self, num_sets: int, q: int) -> None:
        for name, (_, cols, _) in PARTS.items():
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
            self.g.create_dataset(name, data=np.frombuffer(values, dtype=np.int64))
        for name, values in self.crc.items():
            self.g.create_dataset(name, data=np.frombuffer(values, dtype=np.uint32).reshape(-1))
        self.g.attrs.update(num_batches=len(self.ptrs["event_ptr"]) - 1, neg_sets=num_sets, negatives=q)


def _split_counts(split: np.ndarray, chunk: int) -> np.ndarray:
    counts = np.zeros(3, dtype=np.int64)
    for a in range(0, len(split), chunk):
        counts += np.bincount(np.asarray(split[a:a + chunk]), minlength=3)[:3]
    return counts


def _write_event_t(f: h5py.File, t: np.ndarray, chunk: int) -> None:
    """``/event_t`` = [t ‖ 0] as a contiguous dataset, written and CRC'd ``chunk`` events at a time."""
    d = f.create_dataset("event_t", shape=(len(t) + 1,), dtype=np.float64)
    crc = 0
    for a in range(0, len(t) + 1, chunk):
        part = np.asarray(t[a:a + chunk], dtype=np.float64)
        if a + chunk >= len(t) + 1:
            part = np.concatenate([part, [0.0]])
        d[a:a + len(part)] = part
        crc = zlib.crc32(part.view(np.uint8), crc)
    d.attrs["crc32"] = crc


def build_cache(graph_path: str | os.PathLike, out: str | os.PathLike, params: BatchParams, *,
                progress: bool = True, chunk: int = CHECK_CHUNK) -> CacheMeta:
    """Sample every batch of ``graph_path`` and write the cache to ``out`` atomically, streaming.

    Args:
        graph_path: the graph store (memory-mapped, see the module docstring).
        out: the cache file.
        params: the sampling parameters.
        progress: show a progress bar.
        chunk: events read at a time wherever the build scans the stream (checks, split, event
            times); any value gives the same cache.
    """
    params.check()
    from tqdm import tqdm

    chunk = max(int(chunk), 1)
    graph = map_graph(graph_path, chunk=chunk)
    n, e = graph.num_nodes, graph.num_events
    itype = np.dtype(np.int32 if max(n, e + 1, 2 * params.batch_size * (2 + max(params.eval_negatives, 1)))
                     < 2 ** 31 - 1 else np.int64)
    cands = negative_candidates(n, graph.dst, graph.bipartite, chunk=chunk)
    sampler = BatchSampler(RowIndex(graph.tcsr), params, n, e, cands, itype)
    counts = _split_counts(graph.split, chunk)
    meta = CacheMeta(**asdict(params), graph_sha256=str(graph.attrs.get("sha256", "")), num_nodes=n,
                     num_events=e, split_events={s: int(c) for s, c in zip(SPLIT_NAMES, counts)},
                     split_batches={s: int(-(-c // params.batch_size)) for s, c in zip(SPLIT_NAMES, counts)})
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f, \
            tqdm(total=sum(meta.split_batches.values()), unit="batch", disable=not progress,
                 desc="batches") as bar:
        writers = {}
        for grp, state in plan(graph.src, graph.dst, graph.t, graph.split, params.batch_size,
                               params.minibatch_parallelism, n, chunk=chunk):
            for pb in grp:
                name = SPLIT_NAMES[pb.split]
                num_sets, q = (params.neg_sets, 1) if pb.split == 0 else (1, params.eval_negatives)
                if name not in writers:
                    writers[name] = (_Writer(f.create_group(name), itype, tmp.parent), num_sets, q)
                ev = pb.eids
                writers[name][0].add(sampler.batch(pb.split, pb.index, ev, np.asarray(graph.src[ev]),
                                                   np.asarray(graph.dst[ev]), np.asarray(graph.t[ev]),
                                                   pb.write_mask, state, num_sets, q))
                bar.update()
        for name in SPLIT_NAMES:
            if name not in writers:  # an empty split still gets its (empty) group
                num_sets, q = (params.neg_sets, 1) if name == "train" else (1, params.eval_negatives)
                writers[name] = (_Writer(f.create_group(name), itype, tmp.parent), num_sets, q)
            w, num_sets, q = writers[name]
            w.close(num_sets, q)
        _write_event_t(f, graph.t, chunk)
        f.attrs["kind"] = CACHE_KIND
        f.attrs["meta"] = json.dumps(asdict(meta), sort_keys=True)
        f.attrs["format_version"] = CACHE_FORMAT_VERSION
        f.attrs["complete"] = True  # written last: a file without it was never finished
    return meta
