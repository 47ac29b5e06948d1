"""The similar-nodes file (``similar.h5``) that ``disttgl similar`` writes and mitigation reads.

Layout: datasets ``idx`` int64 [N, k] (-1 = padding) and ``score`` float32 [N, k]; attributes
``kind`` = ``disttgl-similar-nodes``, ``method``, ``k``, ``num_nodes``, ``graph_sha256`` (the graph
store's ``sha256``: the table is only valid for that graph) and ``table_sha256`` (of idx and score
bytes, so flipped bytes are caught rather than turning into wrong neighbours).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from disttgl.atomic import atomic_path
from disttgl.errors import DataError

SIMILAR_KIND = "disttgl-similar-nodes"
_AGAIN = "re-run `disttgl similar` for this graph"


def similar_sha256(idx: np.ndarray, score: np.ndarray) -> str:
    """SHA-256 of idx (int64) then score (float32) bytes, C order."""
    h = hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(score, dtype=np.float32).tobytes())
    return h.hexdigest()


def save_similar(path: str | os.PathLike, idx: torch.Tensor | np.ndarray, score: torch.Tensor | np.ndarray, *,
                 method: str, graph_sha256: str, attrs: dict[str, Any] | None = None) -> None:
    """Write the table atomically (a killed job leaves no file at ``path``).

    Args:
        path: output file (similar.h5).
        idx: int64 [N, k] similar node ids, -1 for padding.
        score: float32 [N, k] their scores.
        method: the similarity that produced them.
        graph_sha256: the graph store's ``sha256`` attribute.
        attrs: extra attributes to record (provenance).
    """
    idx = np.ascontiguousarray(np.asarray(idx), dtype=np.int64)
    score = np.ascontiguousarray(np.asarray(score), dtype=np.float32)
    if idx.ndim != 2 or idx.shape != score.shape:
        raise ValueError(f"idx {idx.shape} and score {score.shape} must be the same [N, k] shape")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("idx", data=idx)
        f.create_dataset("score", data=score)
        f.attrs["kind"] = SIMILAR_KIND
        f.attrs["method"] = method
        f.attrs["k"] = int(idx.shape[1])
        f.attrs["num_nodes"] = int(idx.shape[0])
        f.attrs["graph_sha256"] = str(graph_sha256 or "")
        f.attrs["table_sha256"] = similar_sha256(idx, score)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def load_similar(path: str | os.PathLike, num_nodes: int,
                 graph_sha256: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The table, checked; a DataError naming the file if it is not one for this graph.

    Args:
        path: the similar.h5 file.
        num_nodes: the graph's node count (rows expected).
        graph_sha256: the graph store's ``sha256``; None skips only that check.

    Returns:
        (idx int64 [N, k], score float32 [N, k]) as torch tensors.
    """
    if not Path(path).exists():
        raise DataError(path, "similar-nodes file does not exist (run `disttgl similar` first)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != SIMILAR_KIND or "idx" not in f or "score" not in f:
                raise DataError(path, "not a disttgl similar-nodes file")
            recorded = {key: str(f.attrs.get(key, "")) for key in ("graph_sha256", "table_sha256")}
            shape, score_shape = f["idx"].shape, f["score"].shape
            if len(shape) != 2 or shape[0] != num_nodes or score_shape != shape:
                raise DataError(path, f"similar-nodes table has shape idx {shape} / score {score_shape}, "
                                      f"the graph has {num_nodes} nodes")
            if f["idx"].dtype.kind not in "iu" or f["score"].dtype.kind != "f":
                raise DataError(path, "similar-nodes idx must be integers and score floats")
            if graph_sha256 is not None and recorded["graph_sha256"] != graph_sha256:
                raise DataError(path, f"similar nodes were computed on the graph with sha256 "
                                      f"{recorded['graph_sha256'] or '(none recorded)'}, not this one "
                                      f"({graph_sha256 or '(none recorded)'}); {_AGAIN}")
            idx = np.ascontiguousarray(f["idx"][()], dtype=np.int64)
            score = np.ascontiguousarray(f["score"][()], dtype=np.float32)
    except OSError as exc:
        raise DataError(path, f"unreadable similar-nodes file ({exc})") from None
    if similar_sha256(idx, score) != recorded["table_sha256"]:
        raise DataError(path, f"similar-nodes table does not match its checksum: the file is corrupted; {_AGAIN}")
    check_similar_ids(idx, path)
    return torch.from_numpy(idx), torch.from_numpy(score)


def check_similar_ids(idx: np.ndarray, path: str | os.PathLike | None = None) -> None:
    """Every id is -1 (padding) or another node in [0, N): out-of-range ids would index past the
    memory table, and a node listed as its own neighbour would mean the table is not what it says.

    Args:
        idx: int64 [N, k].
        path: the file, for the error message.
    """
    n = idx.shape[0]
    bad = (idx < -1) | (idx >= n)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(path, f"similar-nodes idx[{row}, {col}] = {int(idx[row, col])} is not a node id "
                              f"in [0, {n}) or -1; {_AGAIN}")
    own = idx == np.arange(n)[:, None]
    if own.any():
        row = int(np.nonzero(own)[0][0])
        raise DataError(path, f"similar-nodes row {row} lists the node itself; {_AGAIN}")
