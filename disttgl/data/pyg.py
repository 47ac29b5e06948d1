"""The graph store <-> PyTorch Geometric's ``TemporalData`` (``disttgl export --format pyg``,
``disttgl convert --format pyg``).

The file (``data.pt``) is a plain ``dict`` of tensors written with ``torch.save``, not a pickled
``TemporalData``: a ``TemporalData`` object only loads with ``torch.load(weights_only=True)`` when
its classes are allow-listed, whereas a dict of tensors loads everywhere without running pickled
code, and PyG rebuilds the object from it in one line::

    d = torch.load("data.pt", weights_only=True)
    data = torch_geometric.data.TemporalData(**d)

Keys (E events in the store's order, sorted by time; N nodes):

- ``src``, ``dst`` int64 [E]: the store's node ids 0..N-1, what a PyG model indexes its memory and
  ``x`` with. ``original_id`` int64 [N] (when the store keeps integer input ids) maps them back to
  the input's ids: ``original_id[src]`` is the source as the raw file (for a TGB-sourced store:
  TGB) numbered it. For inputs whose ids already are 0..N-1 with every node used (TGB's edge
  lists, the synthetic graph) ``original_id`` is the identity and the store ids are the input's.
- ``t`` [E]: int64 when every time is an integer (PyG's and TGB's convention), else float64.
- ``msg`` float32 [E, d_e]: the edge features (d_e may be 0).
- ``y`` [E] (class ids) or [E, C] (0/1, multi-label): the event labels, only when the store has labels.
- ``train_mask``, ``val_mask``, ``test_mask`` bool [E]: the store's split.
- ``x`` float32 [N, d_v]: node features, when present.

The store keeps no edge weights, so no ``w`` is written; a ``w`` in an imported file is dropped
with a warning. ``x`` and ``original_id`` are per node: ``TemporalData``'s slicing (``data[mask]``)
also slices any attribute whose length happens to equal the number of events, so drop them before
slicing a graph with N = E.

Reading accepts such a dict and a ``TemporalData`` saved whole by a user (its two PyG classes are
allow-listed for ``weights_only`` loading when torch_geometric is installed; nothing else is ever
unpickled). Masks, when all three are present, give the split (``split_rule = ext_roll``, the
source's split); otherwise convert's chronological 70/15/15 applies. Ids are kept as they are
(they must be non-negative integers): node n of the file is node n of the store, nodes without
events included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from disttgl.atomic import atomic_path
from disttgl.data.graph import Graph
from disttgl.data.readers import RawEvents
from disttgl.errors import DataError

log = logging.getLogger(__name__)

MASKS = ("train_mask", "val_mask", "test_mask")
KNOWN_KEYS = ("src", "dst", "t", "msg", "y", "w", "x", "original_id", *MASKS)
_EXACT_INT = 2 ** 53  # float64 holds every integer time below this exactly


# ------------------------------------------------------------------------------------------- export

def graph_to_tensors(graph: Graph) -> dict[str, Any]:
    """The store's arrays as the dict of tensors described in the module docstring."""
    import torch

    e = graph.num_events
    t = np.asarray(graph.t, dtype=np.float64)
    integral = bool(np.all(np.isfinite(t)) and np.all(t == np.round(t)) and (not e or np.abs(t).max() < _EXACT_INT))
    out: dict[str, Any] = {
        "src": torch.from_numpy(np.ascontiguousarray(graph.src, dtype=np.int64)),
        "dst": torch.from_numpy(np.ascontiguousarray(graph.dst, dtype=np.int64)),
        "t": torch.from_numpy(t.astype(np.int64) if integral else t.copy()),
        "msg": torch.from_numpy(np.ascontiguousarray(graph.edge_feat[:e], dtype=np.float32)),
    }
    if graph.label is not None:
        out["y"] = torch.from_numpy(np.ascontiguousarray(graph.label))
    for code, name in enumerate(MASKS):
        out[name] = torch.from_numpy(np.asarray(graph.split) == code)
    if graph.node_feat is not None:
        out["x"] = torch.from_numpy(np.ascontiguousarray(graph.node_feat, dtype=np.float32))
    oid = graph.original_id
    if oid is not None and oid.dtype.kind in "iu":
        out["original_id"] = torch.from_numpy(np.ascontiguousarray(oid, dtype=np.int64))
    elif oid is not None:
        log.warning("the store's original ids are strings; a .pt file holds tensors only, so the export "
                    "has no original_id")
    return out


def to_temporal_data(graph: Graph):
    """``torch_geometric.data.TemporalData`` of ``graph`` (needs torch_geometric: the ``pyg`` extra)."""
    try:
        from torch_geometric.data import TemporalData
    except ImportError:
        raise DataError(None, "torch_geometric is not installed (pip install 'disttgl[pyg]')") from None
    return TemporalData(**graph_to_tensors(graph))


def write_pyg(graph: Graph, path: str | os.PathLike) -> dict[str, Any]:
    """Write the export of ``graph`` to ``path`` atomically; return what was written."""
    import torch

    tensors = graph_to_tensors(graph)
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
    return tensors


# ------------------------------------------------------------------------------------------- import

def _pyg_safe_globals() -> list:
    """PyG's classes a whole ``TemporalData`` pickle references, when torch_geometric is installed.

    Both only receive their attribute dict on unpickling; its values still pass the weights-only
    unpickler, which allows tensors and plain values only."""
    try:
        from torch_geometric.data import TemporalData
        from torch_geometric.data.storage import GlobalStorage
    except ImportError:
        return []
    return [TemporalData, GlobalStorage]


def load_pyg_file(path: str | os.PathLike) -> dict[str, Any]:
    """The file's mapping of name -> value, loaded with ``weights_only=True`` (no pickled code runs)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    allowed = _pyg_safe_globals()
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before it, dicts only
    if scoped is None:
        allowed = []
    try:
        with scoped(allowed) if allowed else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        # a refused class or function names its GLOBAL; any other refusal is bytes that are no pickle
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            first = f"it references {refused.group(1)}"
            hint = "" if allowed else " (a whole TemporalData needs torch_geometric installed to be read)"
            raise DataError(path, f"refused: the file holds pickled Python objects other than tensors ({first}); "
                            "disttgl reads .pt files with weights_only=True and never runs pickled code"
                            f"{hint}; save a dict of tensors instead: torch.save(data.to_dict(), path)") from None
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), "")
        raise DataError(path, "not a readable PyTorch file, truncated or damaged?"
                        + (f" ({detail[:200]})" if detail else "")) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(path, f"not a readable PyTorch file, truncated or damaged? ({text})") from None
    if allowed and isinstance(obj, allowed[0]):
        obj = obj.to_dict()
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a dict of tensors or a TemporalData, found {type(obj).__name__}")
    return obj


def _array(path: Path, d: dict[str, Any], key: str, ndim: tuple[int, ...], kinds: str) -> np.ndarray | None:
    import torch

    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise DataError(path, f"{key} is a {type(value).__name__}, expected a tensor")
    arr = value.detach().cpu().numpy()
    if arr.ndim not in ndim:
        raise DataError(path, f"{key} has shape {tuple(arr.shape)}, expected {' or '.join(f'{n}-D' for n in ndim)}")
    if arr.dtype.kind not in kinds:
        raise DataError(path, f"{key} has dtype {value.dtype}, expected "
                        + {"iu": "integers", "iub": "integers or booleans"}.get(kinds, "numbers"))
    return arr


def _split_from_masks(path: Path, masks: dict[str, np.ndarray | None], e: int) -> np.ndarray | None:
    given = [k for k, m in masks.items() if m is not None]
    if not given:
        return None
    if len(given) != 3:
        missing = [k for k in MASKS if k not in given]
        raise DataError(path, f"has {', '.join(given)} but not {', '.join(missing)}: give all three masks "
                        "or none (then the chronological split applies)")
    stack = np.stack([masks[k].astype(bool) for k in MASKS])
    for k in MASKS:
        m = masks[k]
        if m.dtype.kind != "b" and not np.isin(m, (0, 1)).all():
            raise DataError(path, f"{k} holds values other than 0/1 and True/False")
    count = stack.sum(axis=0)
    if (count != 1).any():
        i = int(np.flatnonzero(count != 1)[0])
        raise DataError(path, f"event {i} is in {int(count[i])} of train_mask/val_mask/test_mask; every event "
                        "must be in exactly one")
    return np.argmax(stack, axis=0).astype(np.int8)


def read_pyg(path: str | os.PathLike) -> RawEvents:
    """Read a PyG export (or a user's dict/``TemporalData``) as :class:`RawEvents` for ``convert``."""
    path = Path(path)
    d = load_pyg_file(path)
    for key in ("src", "dst", "t"):
        if key not in d or d[key] is None:
            raise DataError(path, f"no {key!r} in the file (keys: {', '.join(map(str, d)) or 'none'}); a "
                            "TemporalData needs src, dst and t")
    src = _array(path, d, "src", (1,), "iu")
    dst = _array(path, d, "dst", (1,), "iu")
    t = _array(path, d, "t", (1,), "iuf")
    e = len(src)
    for key, arr in (("dst", dst), ("t", t)):
        if len(arr) != e:
            raise DataError(path, f"{key} has {len(arr)} entries but src has {e}; every event needs one of each")
    if e == 0:
        raise DataError(path, "holds no events")
    if t.dtype.kind in "iu" and np.abs(t).max() >= _EXACT_INT:
        raise DataError(path, f"time {int(np.abs(t).max())} is too large to keep exactly as a float64 time")
    t = t.astype(np.float64)
    if not np.isfinite(t).all():
        i = int(np.flatnonzero(~np.isfinite(t))[0])
        raise DataError(path, f"t[{i}] is {t[i]}: times must be finite numbers")
    for key, ids in (("src", src), ("dst", dst)):
        if ids.min() < 0:
            i = int(np.flatnonzero(ids < 0)[0])
            raise DataError(path, f"{key}[{i}] is {ids[i]}: node ids must be non-negative")
    per_event = {}
    for key, ndim, kinds in (("msg", (1, 2), "iubf"), ("y", (1, 2), "iubf"), ("w", (1,), "iubf"),
                             *((m, (1,), "iub") for m in MASKS)):
        arr = _array(path, d, key, ndim, kinds)
        if arr is not None and len(arr) != e:
            raise DataError(path, f"{key} has {len(arr)} rows but there are {e} events (src)")
        per_event[key] = arr
    x = _array(path, d, "x", (1, 2), "iubf")
    oid = _array(path, d, "original_id", (1,), "iu")
    max_id = int(max(src.max(), dst.max()))
    num_nodes = max_id + 1
    for key, arr in (("x", x), ("original_id", oid)):
        if arr is not None:
            if len(arr) <= max_id:
                raise DataError(path, f"{key} has {len(arr)} rows but the events use node id {max_id}")
            num_nodes = max(num_nodes, len(arr))
    if x is not None and oid is not None and len(x) != len(oid):
        raise DataError(path, f"x has {len(x)} rows but original_id has {len(oid)}; both are one row per node")
    if per_event["w"] is not None:
        log.warning("%s: the graph store keeps no edge weights; w is not converted", path)
    unknown = sorted(str(k) for k in d if k not in KNOWN_KEYS)
    if unknown:
        log.warning("%s: keys not converted: %s", path, ", ".join(unknown))
    msg = per_event["msg"]
    if msg is not None and msg.ndim == 1:
        msg = msg[:, None]
    if x is not None and x.ndim == 1:
        x = x[:, None]
    if msg is not None and not np.isfinite(msg.astype(np.float64)).all():
        raise DataError(path, f"msg row {int(np.flatnonzero(~np.isfinite(msg).all(axis=1))[0])} (edge features) "
                        "holds NaN or infinite values")
    if x is not None and not np.isfinite(x.astype(np.float64)).all():
        raise DataError(path, f"x row {int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])} holds NaN or "
                        "infinite values")
    y = per_event["y"]
    return RawEvents(path=path, src=src.astype(np.int64), dst=dst.astype(np.int64), t=t, label=y,
                     edge_feat=None if msg is None else msg.astype(np.float32),
                     edge_feat_path=path if msg is not None else None,
                     node_feat=None if x is None else x.astype(np.float32),
                     node_feat_path=None if x is None else path,
                     ext_roll=_split_from_masks(path, {k: per_event[k] for k in MASKS}, e),
                     num_nodes=num_nodes, original_id=None if oid is None else oid.astype(np.int64),
                     line_of=lambda row: None)
