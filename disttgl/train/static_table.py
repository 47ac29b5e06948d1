"""The static memory file: a frozen per-node table [N, d] with the checksums that tie it to its graph.

``disttgl pretrain`` writes it (:mod:`disttgl.train.pretrain`); ``disttgl train --static`` loads it
and refuses a table of another graph, one whose bytes changed, one with NaN/inf rows and one
without the checksum (written by an older disttgl).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from disttgl.atomic import atomic_path
from disttgl.data.graph_store import read_attrs
from disttgl.errors import DataError

STATIC_KIND = "disttgl-static-memory"


def table_sha256(table: np.ndarray) -> str:
    """SHA-256 of the table's float32 bytes (C order): what ``load_static`` checks the data against."""
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.float32).tobytes()).hexdigest()


def save_static(path: str | Path, table: np.ndarray, *, graph_path: str | None = None,
                attrs: dict[str, Any] | None = None) -> None:
    """Write the table with the graph's ``sha256`` and the table's own checksum (``table_sha256``)."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("static_memory", data=table)
        f.attrs["kind"] = STATIC_KIND
        f.attrs["table_sha256"] = table_sha256(table)
        f.attrs["num_nodes"] = int(table.shape[0])
        f.attrs["dim"] = int(table.shape[1])
        if graph_path is not None:
            f.attrs["graph_sha256"] = str(read_attrs(graph_path).get("sha256", ""))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def load_static(path: str | Path, num_nodes: int, *, graph_sha256: str | None = None) -> torch.Tensor:
    """The frozen static memory [N, d], checked: ``num_nodes`` rows, pretrained on the graph whose
    store records ``graph_sha256`` (None skips only that check), bytes matching the checksum saved
    with them, and every value finite. A node count alone let a table of another graph, or one with
    flipped bytes, through."""
    pretrain_again = "re-run `disttgl pretrain` for this graph"
    if not Path(path).exists():
        raise DataError(path, "static memory file does not exist (run `disttgl pretrain` first)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != STATIC_KIND or "static_memory" not in f:
                raise DataError(path, "not a disttgl static memory file")
            attrs = {k: str(f.attrs.get(k, "")) for k in ("graph_sha256", "table_sha256")}
            shape = f["static_memory"].shape
            if len(shape) != 2 or shape[0] != num_nodes:
                raise DataError(path, f"static memory has shape {shape}, the graph has {num_nodes} nodes")
            if graph_sha256 is not None and attrs["graph_sha256"] != graph_sha256:
                raise DataError(path, f"static memory was pretrained on the graph with sha256 "
                                      f"{attrs['graph_sha256'] or '(none recorded)'}, not this one "
                                      f"({graph_sha256 or '(none recorded)'}); {pretrain_again}")
            if not attrs["table_sha256"]:
                raise DataError(path, f"static memory file has no checksum (written by an older disttgl); "
                                      f"{pretrain_again}")
            table = np.ascontiguousarray(f["static_memory"][()], dtype=np.float32)
    except OSError as exc:
        raise DataError(path, f"unreadable static memory file ({exc})") from None
    if table_sha256(table) != attrs["table_sha256"]:
        raise DataError(path, f"static memory does not match its checksum: the file is corrupted; {pretrain_again}")
    bad = int((~np.isfinite(table)).any(1).sum())
    if bad:
        raise DataError(path, f"static memory has non-finite values (NaN or inf) in {bad} of {num_nodes} rows; "
                              f"{pretrain_again}")
    return torch.from_numpy(table)


def nodes_with_training_events(graph: Any) -> np.ndarray:
    """bool [N]: nodes that are the source or destination of a training event.

    Only their table rows learn anything beyond being drawn as negatives; the others keep their random
    initialisation, which would be noise added to the memory of every new node in val and test.
    """
    mask = np.zeros(graph.num_nodes, dtype=bool)
    train = graph.split == 0
    mask[graph.src[train]] = True
    mask[graph.dst[train]] = True
    return mask
