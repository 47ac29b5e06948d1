"""Snapshot DGNN encoders and the link predictor (docs/design.md §11.3).

Each encoder is two stages, so a distributed step can partition the first by snapshot and the
second by vertex with one all-to-all between them:

- ``snapshot_stage(adjs, xs, first, offset) -> H [len(adjs) - first, N, d]``: each output
  snapshot needs only its own adjacency (GCN + LSTM) or its last w (TM-GCN, ``halo`` = w - 1
  entries of history before ``first``); ``offset`` is the global index of ``adjs[0]``.
- ``temporal_stage(H [T, n, d]) -> Z [T, n, d]``: per vertex along time from snapshot 0, any
  block of vertices on its own.

Models:

- :class:`GCNLSTM` (WD-GCN): H_t = ReLU(Â_t X_t W), then one LSTM (torch's, gates i f g o, zero
  initial state) over t for every node, weights shared by all nodes.
- :class:`TMGCN` (the one-layer TM-GCN of IBM's code, ``EmbeddingGCN`` with ``condensed_W``):
  Y_t = Ĉ_t X̂_t W with Ĉ_t = Σ_k M[t, k] Â_k and X̂_t = Σ_k M[t, k] X_k (the M-product ×₃ of
  both the adjacency and the features), M from :func:`~disttgl.snapshot.adjacency.m_weights`;
  ``m_inverse`` then applies M^-1 ×₃ Y (IBM's ``use_Minv``; off in IBM's link-prediction runs,
  and off by default here). One W for all snapshots.
- :class:`LinkPredictor`: an MLP on [z_u ‖ z_v] (IBM's is linear, [z_u ‖ z_v] U, which cannot
  rank candidates v for a given u by anything but v alone; the hidden layer lets u and v interact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from disttgl.snapshot.adjacency import DeviceAdjacency, m_matrix, m_weights, mixed_adjacency, normalized_adjacency
from disttgl.snapshot.features import NodeFeatures

MODELS = ("gcn-lstm", "tmgcn")


@dataclass(frozen=True)
class ModelConfig:
    model: str = "gcn-lstm"
    hidden: int = 32
    m_window: int = 20  # w, IBM's no_diag
    m_choice: int = 2  # M[t, t - d + 1] = 1 / d
    m_rownorm: bool = False
    m_inverse: bool = False

    def check(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.hidden < 1 or self.m_window < 1 or self.m_choice not in (1, 2):
            raise ValueError("hidden and m_window must be >= 1 and m_choice 1 or 2")


def _projected(xs: Sequence[torch.Tensor], first: int, weight: nn.Module) -> list[torch.Tensor]:
    """weight(x) for xs[first:], computed once per distinct tensor (static features are one tensor)."""
    cache: dict[int, torch.Tensor] = {}
    out = []
    for x in xs[first:]:
        if id(x) not in cache:
            cache[id(x)] = weight(x)
        out.append(cache[id(x)])
    return out


class GCNLSTM(nn.Module):
    halo = 0

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.weight = nn.Linear(in_dim, hidden, bias=False)
        self.lstm = nn.LSTM(hidden, hidden)

    def snapshot_stage(self, adjs: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], first: int = 0,
                       offset: int = 0) -> torch.Tensor:
        """H_t = ReLU(Â_t (X_t W)) for t = offset + first .. offset + len(adjs) - 1."""
        xw = _projected(xs, first, self.weight)
        return torch.stack([torch.relu(torch.sparse.mm(a, p)) for a, p in zip(adjs[first:], xw)])

    def temporal_stage(self, h: torch.Tensor) -> torch.Tensor:
        """The LSTM along time for every vertex of ``h`` [T, n, d] (time from snapshot 0)."""
        return self.lstm(h)[0]

    def forward(self, adjs: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.temporal_stage(self.snapshot_stage(adjs, xs))


class TMGCN(nn.Module):
    def __init__(self, in_dim: int, hidden: int, window: int = 20, choice: int = 2, rownorm: bool = False,
                 inverse: bool = False):
        super().__init__()
        self.weight = nn.Linear(in_dim, hidden, bias=False)
        self.window, self.choice, self.rownorm, self.inverse = window, choice, rownorm, inverse
        self.halo = window - 1

    def snapshot_stage(self, adjs: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], first: int = 0,
                       offset: int = 0) -> torch.Tensor:
        """Y_t = Ĉ_t X̂_t W for t = offset + first .. offset + len(adjs) - 1; ``adjs``/``xs`` hold
        the w - 1 snapshots before ``first`` too (fewer at the stream's start)."""
        out = []
        for i in range(first, len(adjs)):
            row = [(k - offset, w) for k, w in m_weights(offset + i, self.window, self.choice, self.rownorm)]
            if row[-1][0] < 0:
                raise ValueError(f"snapshot {offset + i} needs snapshot {row[-1][0] + offset}, before the given window")
            xhat = sum(w * xs[k] for k, w in row)
            c = mixed_adjacency([adjs[k] for k, _ in row], [w for _, w in row])
            out.append(torch.sparse.mm(c, self.weight(xhat)))
        return torch.stack(out)

    def temporal_stage(self, y: torch.Tensor) -> torch.Tensor:
        """M^-1 ×₃ Y with ``inverse`` (time from snapshot 0), else Y."""
        if not self.inverse:
            return y
        t = y.shape[0]
        m = m_matrix(t, self.window, self.choice, self.rownorm, dtype=y.dtype, device=y.device)
        return torch.linalg.solve_triangular(m, y.reshape(t, -1), upper=False).reshape(y.shape)

    def forward(self, adjs: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.temporal_stage(self.snapshot_stage(adjs, xs))


class LinkPredictor(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, zu: torch.Tensor, zv: torch.Tensor) -> torch.Tensor:
        """Logits of links u -> v from embeddings [..., d] (broadcast over leading dimensions)."""
        zu, zv = torch.broadcast_tensors(zu, zv)
        return self.mlp(torch.cat([zu, zv], -1)).squeeze(-1)


def build_encoder(cfg: ModelConfig, in_dim: int) -> nn.Module:
    cfg.check()
    if cfg.model == "gcn-lstm":
        return GCNLSTM(in_dim, cfg.hidden)
    return TMGCN(in_dim, cfg.hidden, cfg.m_window, cfg.m_choice, cfg.m_rownorm, cfg.m_inverse)


class SnapshotLinkModel(nn.Module):
    """Features, encoder and predictor: ``embed(raw adjacencies) -> Z [T, N, d]``, ``score``."""

    def __init__(self, features: NodeFeatures, cfg: ModelConfig):
        super().__init__()
        self.features = features
        self.encoder = build_encoder(cfg, features.out_dim)
        self.predictor = LinkPredictor(cfg.hidden)

    def inputs(self, raws: Sequence[DeviceAdjacency]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(Â_t, X_t) for each raw adjacency, formed on its device in the model's dtype."""
        dtype = self.predictor.mlp[0].weight.dtype
        n = self.features.num_nodes
        return [normalized_adjacency(r, n, dtype) for r in raws], [self.features(r) for r in raws]

    def embed(self, raws: Sequence[DeviceAdjacency]) -> torch.Tensor:
        adjs, xs = self.inputs(raws)
        return self.encoder(adjs, xs)

    def score(self, z: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Logits of src[i] -> dst[i, ...] from one snapshot's embeddings ``z`` [N, d]."""
        zu = z[src].reshape(*src.shape, *([1] * (dst.dim() - src.dim())), -1)
        return self.predictor(zu, z[dst])
