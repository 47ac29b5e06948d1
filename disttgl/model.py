"""TGN with static node memory (DistTGL): GRU memory, one-layer temporal attention, link predictor.

The model holds weights only. Node memory/mail (``disttgl.memory``), edge/node features and the
frozen static memory are passed in, so parallel trainers can read them from a memory server.

Speed: every Linear over a concatenation ``W[a ‖ b]`` is split as ``W_a a + W_b b`` so the parts that
depend only on a node are computed once per unique node (U rows) and gathered, instead of once per
root (R) or per neighbour slot (M >> U). Only the edge/time parts of keys and values run per slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from disttgl.batch import Batch


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 100  # memory and embedding size
    time_dim: int = 100
    heads: int = 2
    dropout: float = 0.2
    edge_dim: int = 0
    node_dim: int = 0  # raw node features added to the memory (0: none)
    static_dim: int = 0  # frozen static memory added to the memory (0: none)
    memory: str = "gru"  # "gru": dynamic memory; "table": learnable per-node table (static pretraining)
    num_nodes: int = 0  # rows of the table (memory="table" only)


@dataclass
class Features:
    """Data-side tensors the model reads, on the model's device."""

    edge_feat: torch.Tensor  # float32 [E + 1, d_e], row E zero
    node_feat: torch.Tensor | None = None  # float32 [N, d_v]
    static: torch.Tensor | None = None  # float32 [N, d_s] frozen static memory


class TimeEncode(nn.Module):
    """phi(dt) = cos(w dt + b), w = 10^-linspace(0, 9, d), b = 0; both trainable."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(10.0 ** -torch.linspace(0, 9, dim))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, dt: torch.Tensor) -> torch.Tensor:
        return torch.cos(torch.addcmul(self.b, dt.unsqueeze(-1), self.w))


class GRUMemory(nn.Module):
    """New memory = GRU([mail ‖ edge_feat[mail_eid] ‖ phi(mail_t - mem_t)], memory)."""

    def __init__(self, dim: int, edge_dim: int, time_dim: int):
        super().__init__()
        self.time = TimeEncode(time_dim)
        self.gru = nn.GRUCell(2 * dim + edge_dim + time_dim, dim)

    def forward(self, memory: torch.Tensor, mail: torch.Tensor, mail_feat: torch.Tensor,
                dt: torch.Tensor) -> torch.Tensor:
        return self.gru(torch.cat([mail, mail_feat, self.time(dt)], 1), memory)


def segment_softmax(score: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``score`` [M, H] within the groups given by ``seg`` [M] (scatter ops)."""
    index = seg.unsqueeze(1).expand_as(score)
    shift = score.new_full((num_segments, score.shape[1]), float("-inf"))
    shift = shift.scatter_reduce(0, index, score.detach(), "amax", include_self=True)
    e = torch.exp(score - shift.index_select(0, seg))
    total = score.new_zeros(num_segments, score.shape[1]).index_add(0, seg, e)
    return e / total.index_select(0, seg)


class TemporalAttention(nn.Module):
    """One layer, H heads: query [h_v ‖ phi(0)], keys/values [h_u ‖ e_uv ‖ phi(dt)],
    LeakyReLU(0.2) scores, softmax per root, out = LayerNorm(ReLU(W[agg ‖ h_v]))."""

    def __init__(self, dim: int, edge_dim: int, time_dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads = dim, heads
        self.time = TimeEncode(time_dim)
        self.node = nn.Linear(dim, 4 * dim)  # h-parts of q, k, v and of the output layer
        self.q_time = nn.Linear(time_dim, dim, bias=False)
        self.kv_time = nn.Linear(time_dim, 2 * dim, bias=False)  # phi(dt) parts of k, v
        self.kv_edge = nn.Linear(edge_dim, 2 * dim, bias=False) if edge_dim else None
        self.out = nn.Linear(dim, dim, bias=False)  # agg part of the output layer
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, root_idx: torch.Tensor, nbr_root: torch.Tensor,
                nbr_idx: torch.Tensor, nbr_feat: torch.Tensor | None, nbr_dt: torch.Tensor) -> torch.Tensor:
        d, nh = self.dim, self.heads
        num_roots, m = root_idx.shape[0], nbr_root.shape[0]
        # index_select (backward: index_add) is much cheaper on CPU than advanced indexing
        q_node, kv_node, out_node = self.node(h).split([d, 2 * d, d], 1)  # per unique node
        q = q_node.index_select(0, root_idx) + self.q_time(self.time(h.new_zeros(1)))  # [R, d]
        # [M, 2d]; addmm fuses the per-slot projections with the gathered node part
        kv = torch.addmm(kv_node.index_select(0, nbr_idx), self.time(nbr_dt), self.kv_time.weight.t())
        if self.kv_edge is not None:
            kv = torch.addmm(kv, nbr_feat, self.kv_edge.weight.t())
        k, v = kv.view(m, 2, nh, d // nh).unbind(1)
        score = F.leaky_relu((q.index_select(0, nbr_root).view(m, nh, d // nh) * k).sum(2), 0.2)
        att = self.drop(segment_softmax(score, nbr_root, num_roots))  # [M, H]
        agg = h.new_zeros(num_roots, nh, d // nh).index_add(0, nbr_root, att.unsqueeze(2) * v)
        out = self.out(agg.view(num_roots, d)) + out_node.index_select(0, root_idx)
        return self.norm(F.relu(self.drop(out)))


class LinkPredictor(nn.Module):
    """score(u, v) = out(ReLU(W_s z_u + W_d z_v))."""

    def __init__(self, dim: int):
        super().__init__()
        self.src, self.dst, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1)

    def forward(self, z: torch.Tensor, num_events: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z: [R, d] root embeddings [src | dst | neg]; returns pos [B] and neg [B, Q] scores."""
        b = num_events
        s = self.src(z[:b])
        d = self.dst(z[b:])
        pos = self.out(F.relu(s + d[:b])).squeeze(1)
        neg = self.out(F.relu(s.unsqueeze(1) + d[b:].view(b, -1, s.shape[1]))).squeeze(2)
        return pos, neg


class TGN(nn.Module):
    """TGN/DistTGL model. ``memory="table"`` swaps the GRU memory for a learnable table (pretraining)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.memory == "gru":
            self.memory = GRUMemory(cfg.dim, cfg.edge_dim, cfg.time_dim)
        elif cfg.memory == "table":
            if cfg.num_nodes <= 0:
                raise ValueError("memory='table' needs num_nodes")
            self.table = nn.Embedding(cfg.num_nodes, cfg.dim)
            nn.init.normal_(self.table.weight, std=0.1)
        else:
            raise ValueError(f"unknown memory kind {cfg.memory!r} (gru or table)")
        self.node_proj = _proj(cfg.node_dim, cfg.dim)
        self.static_proj = _proj(cfg.static_dim, cfg.dim)
        self.attn = TemporalAttention(cfg.dim, cfg.edge_dim, cfg.time_dim, cfg.heads, cfg.dropout)
        self.predict = LinkPredictor(cfg.dim)

    def update_memory(self, batch: Batch, memory: torch.Tensor, mail: torch.Tensor,
                      feats: Features) -> torch.Tensor:
        """New memory [U, d] of every unique node from its stored memory/mail (GRU variant)."""
        dt = (batch.mail_t - batch.mem_t).float()  # float64 subtraction keeps large timestamps exact
        return self.memory(memory, mail, feats.edge_feat.index_select(0, batch.mail_eid), dt)

    def forward(self, batch: Batch, feats: Features, memory: torch.Tensor | None = None,
                mail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Scores pos [B], neg [B, Q] and the batch's new memory [U, d] (None for the table variant)."""
        if self.cfg.memory == "gru":
            if memory is None or mail is None:
                raise ValueError("the GRU model needs the batch's memory and mail")
            new_memory = self.update_memory(batch, memory, mail, feats)
            h = new_memory
        else:
            new_memory = None
            h = self.table(batch.nodes)
        if self.static_proj is not None:
            if feats.static is None:
                raise ValueError("model was built with static memory but none was given")
            h = h + self.static_proj(feats.static.index_select(0, batch.nodes))
        if self.node_proj is not None:
            h = h + self.node_proj(feats.node_feat.index_select(0, batch.nodes))
        nbr_feat = feats.edge_feat.index_select(0, batch.nbr_eid) if self.cfg.edge_dim else None
        z = self.attn(h, batch.root_idx, batch.nbr_root, batch.nbr_idx, nbr_feat, batch.nbr_dt.float())
        pos, neg = self.predict(z, batch.num_events)
        return pos, neg, new_memory


def _proj(in_dim: int, dim: int) -> nn.Module | None:
    if in_dim <= 0:
        return None
    return nn.Identity() if in_dim == dim else nn.Linear(in_dim, dim)


def link_loss(pos: torch.Tensor, neg: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """``ce``: softmax cross-entropy over [pos, negs] (DistTGL); ``bce``: binary CE (TGN/TGL)."""
    if kind == "ce":
        logits = torch.cat([pos.unsqueeze(1), neg], 1)
        return F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
    raise ValueError(f"unknown loss {kind!r} (ce or bce)")
