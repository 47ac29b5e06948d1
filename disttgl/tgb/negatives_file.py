"""The evaluation negatives of TGB's protocol, stored beside a graph store (``tgb_negatives.h5``).

TGB scores every validation and test positive against its own list of negative destinations
(a pickle per split in TGB's folders, or generated with TGB's ``hist_rnd`` rule). disttgl keeps
them as one CSR per split over the split's events in the store's event order: the negatives of the
split's ``r``-th event are ``dst[ptr[r]:ptr[r + 1]]`` (store ids). The file records the sha256 of
the graph store it belongs to and a crc32 per array, and is written atomically, as the other
artefacts (docs/design.md §3).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from disttgl.atomic import atomic_path
from disttgl.data.graph_store import read_attrs
from disttgl.errors import DataError

NEGATIVES_KIND = "disttgl-tgb-negatives"
SPLITS = ("val", "test")


@dataclass
class SplitNegatives:
    """One split's negatives: row ``r`` (the split's ``r``-th event) is ``dst[ptr[r]:ptr[r + 1]]``."""

    ptr: np.ndarray  # int64 [events of the split + 1], non-decreasing, ptr[0] = 0
    dst: np.ndarray  # int64 [ptr[-1]] destination node ids of the store

    def __post_init__(self) -> None:
        self.ptr = np.ascontiguousarray(self.ptr, dtype=np.int64)
        self.dst = np.ascontiguousarray(self.dst, dtype=np.int64)

    @property
    def rows(self) -> int:
        return len(self.ptr) - 1

    def row(self, r: int) -> np.ndarray:
        return self.dst[self.ptr[r]:self.ptr[r + 1]]


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def split_events(graph_path: str | Path, split: str) -> int:
    """Events of ``split`` in the store (its ``events/split`` code 1 = val, 2 = test)."""
    with h5py.File(graph_path, "r") as f:
        return int((f["events/split"][()] == SPLITS.index(split) + 1).sum())


def check_split(path: Any, split: str, neg: SplitNegatives, *, events: int, num_nodes: int) -> None:
    """The CSR is well formed for a split of ``events`` events over ``num_nodes`` nodes."""
    p = neg.ptr
    if neg.rows != events:
        raise DataError(path, f"{split}: negatives for {neg.rows} events, the {split} split has {events}")
    if len(p) == 0 or p[0] != 0 or (np.diff(p) < 0).any() or p[-1] != len(neg.dst):
        raise DataError(path, f"{split}/ptr is not a CSR offset array over {len(neg.dst)} negatives")
    if len(neg.dst) and (neg.dst.min() < 0 or neg.dst.max() >= num_nodes):
        bad = int(np.flatnonzero((neg.dst < 0) | (neg.dst >= num_nodes))[0])
        raise DataError(path, f"{split}/dst[{bad}] is {int(neg.dst[bad])}, node ids must lie in [0, {num_nodes})")


def save_negatives(path: str | Path, negatives: dict[str, SplitNegatives], *, graph_path: str | Path,
                   attrs: dict[str, Any] | None = None) -> None:
    """Write ``negatives`` (``val`` and/or ``test``) for the graph store at ``graph_path``."""
    g = read_attrs(graph_path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["kind"] = NEGATIVES_KIND
        f.attrs["graph_sha256"] = str(g.get("sha256", ""))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for split, neg in negatives.items():
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            for name, a in (("ptr", neg.ptr), ("dst", neg.dst)):
                f.create_dataset(f"{split}/{name}", data=a).attrs["crc32"] = _crc(a)


def negatives_attrs(path: str | Path) -> dict[str, Any]:
    """The file's attributes (source, version, negatives per positive...), checked to be ours."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != NEGATIVES_KIND:
                raise DataError(path, "not a disttgl TGB negatives file")
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise DataError(path, f"unreadable TGB negatives file ({exc})") from None


def load_negatives(path: str | Path, split: str, *, graph_path: str | Path) -> SplitNegatives:
    """One split's negatives, checked against the graph store: made for it (sha256), arrays intact
    (crc32), one row per event of the split, ids in range."""
    if not Path(path).exists():
        raise DataError(path, "TGB negatives file does not exist (`disttgl tgb-negatives` writes one)")
    g = read_attrs(graph_path)
    attrs = negatives_attrs(path)
    if str(attrs.get("graph_sha256", "")) != str(g.get("sha256", "")):
        raise DataError(path, f"negatives were made for the graph with sha256 {attrs.get('graph_sha256') or '(none)'}, "
                              f"not {graph_path} ({g.get('sha256') or '(none)'}); make them again")
    try:
        with h5py.File(path, "r") as f:
            if split not in f:
                raise DataError(path, f"no negatives for the {split} split")
            arrays = {}
            for name in ("ptr", "dst"):
                ds = f[f"{split}/{name}"]
                a = ds[()]
                if _crc(a) != int(ds.attrs.get("crc32", -1)):
                    raise DataError(path, f"{split}/{name} fails its checksum (the file is corrupted)")
                arrays[name] = a
    except OSError as exc:
        raise DataError(path, f"unreadable TGB negatives file ({exc})") from None
    neg = SplitNegatives(arrays["ptr"], arrays["dst"])
    check_split(path, split, neg, events=split_events(graph_path, split), num_nodes=int(g["num_nodes"]))
    return neg
