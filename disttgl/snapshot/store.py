"""The snapshots file (``snapshots.h5``, docs/design.md §11.2): written atomically, every array with
a crc32, and a loader that checks kind, version, shapes, checksums and the lists' invariants so a
wrong or damaged file fails with a :class:`DataError` naming it.

Layout: for each of ``adj`` (counts), ``diff`` (signed changes) and ``events`` (the snapshot's own
events per directed pair): ``{name}/ptr`` int64 [T + 1], ``{name}/row``, ``{name}/col`` (int32 when
N fits, else int64) and ``{name}/value`` (int32 when 2E fits) [ptr[T]]. ``split`` int8 [T],
``diff_kinds`` int64 [T, 3]. Attributes: kind, format_version, graph_sha256, num_nodes, num_events,
bipartite, num_snapshots (T), t0, delta, edge_life, symmetric, last_closed, source.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from disttgl.atomic import atomic_path
from disttgl.errors import DataError
from disttgl.snapshot.build import PairLists, Snapshots

KIND = "disttgl-snapshots"
FORMAT_VERSION = 1
LISTS = ("adj", "diff", "events")
_FIELDS = {"adj": "adjacency", "diff": "diff", "events": "events"}
_REBUILD = "rebuild it with `disttgl snapshots`"


@dataclass(frozen=True)
class SnapshotFile:
    """A loaded snapshots file: the snapshots and the graph they were cut from."""

    snapshots: Snapshots
    graph_sha256: str
    num_events: int
    bipartite: bool
    attrs: dict[str, Any]


def _crc(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8))


def _put(group: h5py.Group, name: str, data: np.ndarray) -> None:
    data = np.ascontiguousarray(data)
    group.create_dataset(name, data=data).attrs["crc32"] = _crc(data)


def write_snapshots(snaps: Snapshots, path: str | os.PathLike, *, graph_sha256: str, num_events: int,
                    bipartite: bool, source: str | None = None) -> None:
    """Write ``snaps`` atomically to ``path``.

    Args:
        snaps: from :func:`disttgl.snapshot.build.build_snapshots`.
        path: the output file.
        graph_sha256, num_events, bipartite, source: the graph store's, recorded so training can
            check it is given the graph the snapshots were cut from.
    """
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for name in LISTS:
                lists: PairLists = getattr(snaps, _FIELDS[name])
                g = f.create_group(name)
                for field in ("ptr", "row", "col", "value"):
                    _put(g, field, getattr(lists, field))
            _put(f, "split", snaps.split.astype(np.int8))
            _put(f, "diff_kinds", snaps.diff_kinds.astype(np.int64))
            f.attrs.update(kind=KIND, format_version=FORMAT_VERSION, graph_sha256=str(graph_sha256),
                           num_nodes=int(snaps.num_nodes), num_events=int(num_events), bipartite=bool(bipartite),
                           num_snapshots=int(snaps.num_snapshots), t0=float(snaps.t0), delta=float(snaps.delta),
                           edge_life=int(snaps.edge_life), symmetric=bool(snaps.symmetric),
                           last_closed=bool(snaps.last_closed), source=str(source or ""))
    except OSError as exc:
        raise DataError(path, f"cannot write the snapshots file ({exc})") from None


def _corrupt(path: str | os.PathLike, problem: str) -> DataError:
    return DataError(path, f"corrupt snapshots file: {problem}; {_REBUILD}")


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[h5py.File]:
    if not Path(path).exists():
        raise DataError(path, "snapshots file does not exist (run `disttgl snapshots` first)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not a readable HDF5 snapshots file ({exc})") from None
    try:
        with f:
            kind = f.attrs.get("kind")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind != KIND:
                raise DataError(path, f"not a disttgl snapshots file (kind {kind!r}, expected {KIND!r})")
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise DataError(path, f"snapshots format version {version}, this disttgl reads {FORMAT_VERSION}; "
                                      f"{_REBUILD}")
            yield f
    except (OSError, KeyError, RuntimeError) as exc:
        raise DataError(path, f"corrupt or truncated snapshots file ({exc}); {_REBUILD}") from None


def _attr(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v.decode() if isinstance(v, bytes) else v


def read_snapshot_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The file's attributes (kind and version checked)."""
    with _open(path) as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def _read(path: str | os.PathLike, f: h5py.File, name: str, ndim: int, kinds: str) -> np.ndarray:
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise _corrupt(path, f"{name} is missing")
    if ds.ndim != ndim or ds.dtype.kind not in kinds:
        raise _corrupt(path, f"{name} has shape {ds.shape} and dtype {ds.dtype}")
    data = ds[()]
    crc = ds.attrs.get("crc32")
    if crc is None or _crc(data) != int(crc):
        raise _corrupt(path, f"{name} fails its checksum (its bytes changed after it was written)")
    return data


def _check_lists(path: str | os.PathLike, name: str, lists: PairLists, num_nodes: int, nonzero: str) -> None:
    ptr, n = lists.ptr, len(lists.row)
    if len(lists.col) != n or len(lists.value) != n:
        raise _corrupt(path, f"{name}/row, col and value differ in length")
    if ptr[0] != 0 or ptr[-1] != n or (np.diff(ptr) < 0).any():
        raise _corrupt(path, f"{name}/ptr is not a non-decreasing run from 0 to {n}")
    for field in ("row", "col"):
        ids = getattr(lists, field)
        if n and (ids.min() < 0 or ids.max() >= num_nodes):
            raise _corrupt(path, f"{name}/{field} holds ids outside [0, {num_nodes})")
    bad = (lists.value <= 0) if nonzero == "positive" else (lists.value == 0)
    if bad.any():
        raise _corrupt(path, f"{name}/value[{int(np.flatnonzero(bad)[0])}] is {lists.value[bad][0]}, "
                             f"values must be {nonzero}")
    if n > 1:  # strictly increasing (row, col) inside each snapshot
        key = lists.row.astype(np.int64) * num_nodes + lists.col
        down = key[1:] <= key[:-1]
        starts = ptr[1:-1]
        down[starts[(starts > 0) & (starts < n)] - 1] = False
        if down.any():
            raise _corrupt(path, f"{name} is not sorted by (row, col) within a snapshot (entry {int(np.flatnonzero(down)[0]) + 1})")


def load_snapshots(path: str | os.PathLike) -> SnapshotFile:
    """Read and check a snapshots file.

    Args:
        path: written by :func:`write_snapshots` (``disttgl snapshots``).
    """
    with _open(path) as f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        try:
            n, num = int(attrs["num_nodes"]), int(attrs["num_snapshots"])
            scalars = dict(t0=float(attrs["t0"]), delta=float(attrs["delta"]), edge_life=int(attrs["edge_life"]),
                           symmetric=bool(attrs["symmetric"]), last_closed=bool(attrs["last_closed"]))
            num_events, bipartite = int(attrs["num_events"]), bool(attrs["bipartite"])
        except (KeyError, ValueError, TypeError) as exc:
            raise _corrupt(path, f"attribute missing or malformed ({exc})") from None
        lists = {}
        for name in LISTS:
            ptr = _read(path, f, f"{name}/ptr", 1, "iu").astype(np.int64)
            if len(ptr) != num + 1:
                raise _corrupt(path, f"{name}/ptr has {len(ptr)} entries for {num} snapshots")
            lists[name] = PairLists(ptr=ptr, row=_read(path, f, f"{name}/row", 1, "iu"),
                                    col=_read(path, f, f"{name}/col", 1, "iu"),
                                    value=_read(path, f, f"{name}/value", 1, "i"))
        split = _read(path, f, "split", 1, "iu").astype(np.int8)
        kinds = _read(path, f, "diff_kinds", 2, "iu").astype(np.int64)
    if len(split) != num or kinds.shape != (num, 3):
        raise _corrupt(path, f"split has shape {split.shape} and diff_kinds {kinds.shape} for {num} snapshots")
    if len(split) and (split.min() < 0 or split.max() > 2 or (np.diff(split) < 0).any()):
        raise _corrupt(path, "split must be 0 (train), 1 (val), 2 (test), never decreasing")
    _check_lists(path, "adj", lists["adj"], n, "positive")
    _check_lists(path, "diff", lists["diff"], n, "non-zero")
    _check_lists(path, "events", lists["events"], n, "positive")
    _check_totals(path, lists["adj"], lists["diff"], kinds)
    snaps = Snapshots(num_nodes=n, adjacency=lists["adj"], diff=lists["diff"], events=lists["events"],
                      diff_kinds=kinds, split=split, **scalars)
    return SnapshotFile(snapshots=snaps, graph_sha256=str(attrs.get("graph_sha256", "")), num_events=num_events,
                        bipartite=bipartite, attrs=attrs)


def _totals(lists: PairLists) -> np.ndarray:
    out = np.zeros(len(lists), np.int64)
    sizes = lists.sizes()
    nz = sizes > 0
    if nz.any():
        out[nz] = np.add.reduceat(lists.value.astype(np.int64), lists.ptr[:-1][nz])
    return out


def _check_totals(path: str | os.PathLike, adj: PairLists, diff: PairLists, kinds: np.ndarray) -> None:
    """Cheap consistency of the adjacency with its differences: every difference's change of the
    total count, and its number of entries, must match (the full replay is the streamer's)."""
    if not np.array_equal(kinds.sum(1), diff.sizes()):
        raise _corrupt(path, "diff_kinds does not count the entries of each difference")
    total = _totals(adj)
    change = np.diff(np.r_[0, total])
    if not np.array_equal(change, _totals(diff)):
        s = int(np.flatnonzero(change != _totals(diff))[0])
        raise _corrupt(path, f"snapshot {s}'s difference does not turn snapshot {s - 1} into snapshot {s}")
