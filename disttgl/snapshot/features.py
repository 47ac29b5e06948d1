"""Node features X_t of the snapshot models (docs/design.md §11.3), one flag, three sources:

- ``store``: the graph store's ``node_feat`` [N, F], the same in every snapshot;
- ``embedding``: a learnable table [N, dim], the same in every snapshot (transductive);
- ``degree``: one-hot out-degree ‖ one-hot in-degree of the snapshot's raw adjacency (distinct
  neighbours, capped at ``degree_cap``: the last bin holds every larger degree), 2 (cap + 1)
  features computed on the device from the adjacency, so they change with the snapshot and need
  no per-node parameters (EvolveGCN's choice for graphs without features).

``auto`` (the training default) takes ``store`` when the store has node features, else ``degree``.
"""

from __future__ import annotations

import torch
from torch import nn

from disttgl.snapshot.adjacency import DeviceAdjacency

MODES = ("auto", "store", "embedding", "degree")


def resolve_mode(mode: str, has_store_features: bool) -> str:
    """``auto`` -> ``store`` or ``degree``; ``store`` without features is a ValueError."""
    if mode not in MODES:
        raise ValueError(f"node features must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "store" if has_store_features else "degree"
    if mode == "store" and not has_store_features:
        raise ValueError("the graph store has no node features (node_feat); use embedding or degree")
    return mode


def one_hot_degrees(adj: DeviceAdjacency, num_nodes: int, cap: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, 2 (cap + 1)]: one-hot min(out-degree, cap) ‖ one-hot min(in-degree, cap)."""
    out_deg = torch.bincount(adj.row, minlength=num_nodes).clamp_(max=cap)
    in_deg = torch.bincount(adj.col, minlength=num_nodes).clamp_(max=cap)
    x = torch.zeros(num_nodes, 2 * (cap + 1), dtype=dtype, device=adj.row.device)
    nodes = torch.arange(num_nodes, device=adj.row.device)
    x[nodes, out_deg] = 1
    x[nodes, cap + 1 + in_deg] = 1
    return x


class NodeFeatures(nn.Module):
    """X_t for a snapshot: ``forward(adj) -> [N, out_dim]`` (``adj`` is used by ``degree`` only)."""

    def __init__(self, mode: str, num_nodes: int, *, table: torch.Tensor | None = None, dim: int = 32,
                 degree_cap: int = 32):
        super().__init__()
        if mode not in MODES[1:]:
            raise ValueError(f"resolve the node-feature mode first, got {mode!r}")
        self.mode, self.num_nodes, self.degree_cap = mode, num_nodes, degree_cap
        if mode == "store":
            if table is None or table.shape[0] != num_nodes:
                raise ValueError("store features need a table with one row per node")
            self.register_buffer("table", table.float().clone())
            self.out_dim = int(table.shape[1])
        elif mode == "embedding":
            self.table = nn.Parameter(torch.randn(num_nodes, dim) * dim ** -0.5)
            self.out_dim = dim
        else:
            if degree_cap < 1:
                raise ValueError(f"degree cap must be >= 1, got {degree_cap}")
            self.register_buffer("dtype_probe", torch.zeros(0))  # follows .double() / .to(device)
            self.out_dim = 2 * (degree_cap + 1)

    def forward(self, adj: DeviceAdjacency) -> torch.Tensor:
        if self.mode == "degree":
            return one_hot_degrees(adj, self.num_nodes, self.degree_cap, self.dtype_probe.dtype)
        return self.table
