"""The graph store's events and T-CSR as read-only memory maps of the file (:func:`map_graph`).

:func:`~disttgl.data.graph_store.load_graph` reads every array into memory: 73 bytes an event for
the events and the T-CSR alone, before any feature. A stage that walks the stream once (the batch
cache's build) maps the arrays instead: the store writes 1-D arrays as contiguous, unfiltered HDF5
datasets, so each is a plain run of bytes at a known offset of the file. The pages a stage touches
are the kernel's page cache (evicted under memory pressure, re-read from the file when needed), not
the process's own memory, so a store larger than RAM can be walked.

Checks are the same as ``load_graph``'s: the layout against the attributes, every array's CRC-32
and the store's invariants (:func:`~disttgl.data.graph_store.check_graph`), all read ``chunk``
entries at a time. A dataset that cannot be mapped (an empty one, or one written chunked by another
tool) is read into memory instead.
"""

from __future__ import annotations

import logging
import os
import zlib

import h5py
import numpy as np

from disttgl.data.graph import TCSR, Graph
from disttgl.data.graph_store import CHECK_CHUNK, _attr, _corrupt, _open, _read, check_graph

log = logging.getLogger(__name__)

_MAPPED = ("events/src", "events/dst", "events/t", "events/split", "tcsr/nbr", "tcsr/t", "tcsr/eid")


def mappable(ds: h5py.Dataset) -> bool:
    """Whether ``ds`` is one contiguous, unfiltered run of bytes in its file (a memory map can read it)."""
    plist = ds.id.get_create_plist()
    return (ds.size > 0 and ds.dtype.kind in "iuf" and plist.get_layout() == h5py.h5d.CONTIGUOUS
            and plist.get_external_count() == 0 and ds.id.get_offset() is not None)


def map_dataset(path: str | os.PathLike, ds: h5py.Dataset) -> np.ndarray:
    """A read-only memory map of a :func:`mappable` dataset."""
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=ds.id.get_offset(), shape=ds.shape)


def _crc_chunked(a: np.ndarray, chunk: int) -> int:
    crc, flat = 0, a.reshape(-1)
    for i in range(0, len(flat), chunk):
        crc = zlib.crc32(np.ascontiguousarray(flat[i:i + chunk]).view(np.uint8), crc)
    return crc


def _array(path: str | os.PathLike, f: h5py.File, name: str, chunk: int) -> np.ndarray:
    """Dataset ``name`` mapped (checked against its crc32 chunk by chunk), or read when it cannot be."""
    ds = f[name]
    if not mappable(ds):
        if ds.size:
            log.debug("%s: %s is not contiguous, reading it into memory", path, name)
        return _read(path, f, name)
    data = map_dataset(path, ds)
    crc = ds.attrs.get("crc32")
    if crc is not None and _crc_chunked(data, chunk) != int(crc):
        raise _corrupt(path, f"{name} fails its checksum (its bytes changed after it was written)")
    return data


def map_graph(path: str | os.PathLike, *, features: bool = False, chunk: int = CHECK_CHUNK) -> Graph:
    """The store at ``path`` as ``load_graph(path, features=features)`` gives it, with its events and
    T-CSR memory-mapped: O(N) memory (``indptr``, the node map) and the features if asked for,
    plus what the caller touches.

    Args:
        path: the graph store.
        features: also read ``edge_feat`` and ``node_feat`` into memory (training: the model reads them).
        chunk: entries read at a time by the checksum and invariant passes.
    """
    with _open(path) as f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        e = int(attrs["num_events"])
        if features:
            edge_feat = _read(path, f, "edge_feat")
            node_feat = _read(path, f, "node_feat") if "node_feat" in f else None
        else:
            if f["edge_feat"].shape[1] and f["edge_feat"][e].any():
                raise _corrupt(path, "the last row of edge_feat (the 'no message yet' sentinel) is not zero")
            edge_feat, node_feat = np.zeros((e + 1, 0), np.float32), None
        arrays = {name: _array(path, f, name, chunk) for name in _MAPPED}
        indptr = _read(path, f, "tcsr/indptr")
        label = _array(path, f, "events/label", chunk) if "label" in f["events"] else None
        nm = f["node_map"] if "node_map" in f else {}
        oid = _read(path, f, "node_map/original_id") if "original_id" in nm else None
        if oid is not None and oid.dtype.kind == "O":
            oid = oid.astype(str)
        side = _read(path, f, "node_map/side") if "side" in nm else None
    graph = Graph(src=arrays["events/src"], dst=arrays["events/dst"], t=arrays["events/t"],
                  split=arrays["events/split"], num_nodes=int(attrs["num_nodes"]), bipartite=bool(attrs["bipartite"]),
                  edge_feat=edge_feat, node_feat=node_feat,
                  tcsr=TCSR(indptr=indptr, nbr=arrays["tcsr/nbr"], t=arrays["tcsr/t"], eid=arrays["tcsr/eid"]),
                  label=label, original_id=oid, side=side, attrs=attrs)
    check_graph(graph, path, edge_feat=features, chunk=chunk)
    return graph
