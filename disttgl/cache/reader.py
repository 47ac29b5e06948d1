"""Reading the batch cache: :func:`open_cache` and :class:`BatchCache` (layout in :mod:`disttgl.cache.format`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from disttgl.cache.batch import Batch
from disttgl.cache.format import (CACHE_FORMAT_VERSION, CACHE_KIND, NEGATIVE_PARTS, PARTS, POINTERS, POSITIVE_PARTS,
                                  CacheMeta, parts_crc)
from disttgl.data.graph import SPLIT_NAMES
from disttgl.data.graph_store import read_attrs
from disttgl.errors import DataError


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
        if verify and parts_crc([self._event_t]) != et_crc:
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
        ptr = {p: g[p][()] for p in POINTERS + ("pos_crc", "neg_crc")}
        offsets = {}
        for name in PARTS:
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
            for name, (pname, _, _) in PARTS.items():
                rows = 2 * ptr["event_ptr"][-1] if pname is None else ptr[pname][-1]
                if len(data[name]) != rows or (pname and np.any(np.diff(ptr[pname]) < 0)):
                    raise DataError(self.path, f"corrupt batch cache: {s}/{name} has {len(data[name])} rows, "
                                               f"offsets say {rows}")

    def num_batches(self, split: str) -> int:
        return len(self._layout[split][0]["event_ptr"]) - 1

    def num_neg_sets(self, split: str) -> int:
        return self._layout[split][1]

    def arrays(self, split: str, b: int, neg_set: int = 0, negatives: bool = True) -> dict[str, np.ndarray]:
        """The numpy pieces of batch ``b`` (the :class:`Batch` fields, before tensor conversion);
        ``negatives=False``: its positive part only (Q = 0: no negative roots, nodes or slots)."""
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
        for name in POSITIVE_PARTS:
            pname = PARTS[name][0]
            lo, hi = (2 * e0, 2 * e1) if pname is None else (p[pname][b], p[pname][b + 1])
            x[name] = data[name][lo:hi]
        for name in NEGATIVE_PARTS:
            pname = PARTS[name][0]
            lo, hi = (p[pname][seg], p[pname][seg + 1]) if negatives else (0, 0)
            x[name] = data[name][lo:hi]
        if self.verify:
            if parts_crc(x[k] for k in POSITIVE_PARTS) != p["pos_crc"][b]:
                raise DataError(self.path, f"corrupt batch cache: checksum mismatch in {split} batch {b} "
                                           "(positive part)")
            if negatives and parts_crc(x[k] for k in NEGATIVE_PARTS) != p["neg_crc"][seg]:
                raise DataError(self.path, f"corrupt batch cache: checksum mismatch in {split} batch {b} "
                                           f"negative set {seg - b * sets}")
        return assemble(x, self._event_t)

    def batch(self, split: str, b: int, neg_set: int = 0, negatives: bool = True) -> Batch:
        """Batch ``b`` of ``split`` with train negative set ``neg_set`` (ignored for val/test), or
        without negatives (``negatives=False``: edge classification reads the positives only)."""
        return Batch(**{k: torch.from_numpy(v) for k, v in self.arrays(split, b, neg_set, negatives).items()})

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


def assemble(x: dict[str, np.ndarray], event_t: np.ndarray) -> dict[str, np.ndarray]:
    """The :class:`Batch` fields (numpy) from one batch's cache parts (``POSITIVE_PARTS`` and
    ``NEGATIVE_PARTS`` of one negative set, as :class:`disttgl.cache.build.BatchSampler` makes them)
    and ``event_t`` [E + 1] (every event's time, 0 for the no-event row E)."""
    ev, t, pos_root, pos_node, pos_nbr = (x[k] for k in POSITIVE_PARTS)
    neg_root, neg_node, neg_nbr = (x[k] for k in NEGATIVE_PARTS)
    i64 = np.int64
    node = np.concatenate([pos_node, neg_node]).astype(i64)
    nbr = np.concatenate([pos_nbr, neg_nbr]).astype(i64)
    nbr_root = np.repeat(np.arange(len(pos_root) + len(neg_root)), np.concatenate([pos_root[:, 2], neg_root[:, 2]]))
    q = len(neg_root) // max(len(ev), 1)
    root_t = np.concatenate([t, t, np.repeat(t, q)])
    return dict(
        eid=ev[:, 0].copy(), t=t.copy(), src=ev[:, 1].copy(), dst=ev[:, 2].copy(),
        neg=neg_root[:, 0].astype(i64).reshape(len(ev), q),
        nodes=node[:, 0].copy(), root_idx=np.concatenate([pos_root[:, 0], neg_root[:, 1]]).astype(i64),
        nbr_root=nbr_root,
        nbr_idx=nbr[:, 0].copy(), nbr_eid=nbr[:, 1].copy(),
        nbr_dt=(root_t[nbr_root] - event_t[nbr[:, 1]]).astype(np.float32),
        mem_t=event_t[node[:, 2]], mail_t=event_t[node[:, 1]], mail_eid=node[:, 1].copy(),
        write_mask=pos_root[:, 1].astype(bool))
