"""TGN with static node memory (DistTGL): GRU memory, one-layer temporal attention, link predictor.

The model holds weights only. Node memory/mail (``disttgl.models.memory``), edge/node features and the
frozen static memory are passed in, so parallel trainers can read them from a memory server.

Speed (CPU training is bound by passes over the per-neighbour-slot tensors):
- the attention never builds keys and values per slot. With slots x = [h_u ‖ e_uv ‖ phi(dt)],
  q.k = (W_k^T q).x + q.b_k and sum(att v) = W_v sum(att x) + b_v sum(att), so the projections run
  once per root and per slot only one dot product and one weighted sum remain (``disttgl.models.kernels``);
- the slots sit in a padded [R, K] layout, so the softmax is dense instead of scatter ops;
- the backward pass never builds per-slot gradients of h_u and phi(dt): they go straight into the
  gradients of h and of the time encoding's w and b (``_SlotAttention``);
- on CPU that per-slot core runs in C kernels, one pass per root with its slots in cache
  (``disttgl.models.native``), and so do evaluation's link scores over 49 negatives;
- the GRU's input projection is split so that the mail (data) needs no input gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from disttgl.models import native
from disttgl.cache.batch import Batch
from disttgl.models.edge_head import EdgeClassifier
from disttgl.models.kernels import cos_encoding, dropout_scale, float32_forward, slot_attention, slot_layout
from disttgl.models.kernels import dropout as apply_dropout


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 100  # memory and embedding size
    time_dim: int = 100
    heads: int = 2
    dropout: float = 0.2
    edge_dim: int = 0
    node_dim: int = 0  # raw node features added to the memory (0: none)
    static_dim: int = 0  # frozen static memory added to the memory (0: none)
    static_dropout: float = 0.0  # training: chance that a node's static memory row is left out
    # "gru": TGN's dynamic memory; "rnn": JODIE's; "apan": APAN's mailbox attention (the latter two
    # in disttgl.models.variants); "table": learnable per-node table (static pretraining)
    memory: str = "gru"
    num_nodes: int = 0  # rows of the table (memory="table" only)
    mailbox_size: int = 10  # memory="apan": mails kept per node
    head: str = ""  # embedding: "tgn" (attention), "jodie", "apan"; "": the memory kind's own (table: tgn)
    classes: int = 0  # 0: link prediction (LinkPredictor); C >= 2: an EdgeClassifier over C classes instead


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
        return cos_encoding(dt, self.w, self.b)


class GRUMemory(nn.Module):
    """New memory = GRU([mail ‖ edge_feat[mail_eid] ‖ phi(mail_t - mem_t)], memory).

    nn.GRUCell's parameters and equations, with the input projection split by part: mail and edge
    features are data, so only the time part needs an input gradient.
    """

    def __init__(self, dim: int, edge_dim: int, time_dim: int):
        super().__init__()
        self.time = TimeEncode(time_dim)
        self.gru = nn.GRUCell(2 * dim + edge_dim + time_dim, dim)

    @float32_forward
    def forward(self, memory: torch.Tensor, mail: torch.Tensor, mail_feat: torch.Tensor,
                dt: torch.Tensor) -> torch.Tensor:
        time_dim = self.time.w.shape[0]
        w_data, w_time = self.gru.weight_ih.split([self.gru.input_size - time_dim, time_dim], 1)
        x = torch.cat([mail, mail_feat], 1) if mail_feat.shape[1] else mail
        gi = torch.addmm(torch.addmm(self.gru.bias_ih, x, w_data.t()), self.time(dt), w_time.t())
        gh = torch.addmm(self.gru.bias_hh, memory, self.gru.weight_hh.t())
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(torch.addcmul(i_n, r, h_n))
        return torch.lerp(n, memory, z)  # (1 - z) n + z h


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
        self.p = dropout
        self.norm = nn.LayerNorm(dim)

    # without gradients, roots are taken this many at a time: the slot tensors of a 49-negative
    # evaluation batch (30,600 roots) are 120 MiB each, and pieces under the allocator's 32 MiB
    # mmap threshold are reused instead of page-faulted in afresh
    eval_chunk = 4096
    fused = True  # CPU float32: the C kernels of disttgl.models.native when they build (False: torch ops only)

    def forward(self, h: torch.Tensor, root_idx: torch.Tensor, nbr_root: torch.Tensor,
                nbr_idx: torch.Tensor, nbr_feat: torch.Tensor | None, nbr_dt: torch.Tensor) -> torch.Tensor:
        num_roots = root_idx.shape[0]
        if torch.is_grad_enabled() or num_roots <= self.eval_chunk:
            return self._attend(h, root_idx, nbr_root, nbr_idx, nbr_feat, nbr_dt)
        starts = list(range(0, num_roots, self.eval_chunk))
        bounds = torch.tensor(starts + [num_roots], device=nbr_root.device)
        cuts = torch.searchsorted(nbr_root, bounds).tolist()  # slots are grouped by root
        out = []
        for start, lo, hi in zip(starts, cuts, cuts[1:]):
            out.append(self._attend(h, root_idx[start:start + self.eval_chunk], nbr_root[lo:hi] - start,
                                    nbr_idx[lo:hi], None if nbr_feat is None else nbr_feat[lo:hi], nbr_dt[lo:hi]))
        return torch.cat(out)

    def _attend(self, h: torch.Tensor, root_idx: torch.Tensor, nbr_root: torch.Tensor, nbr_idx: torch.Tensor,
                nbr_feat: torch.Tensor | None, nbr_dt: torch.Tensor) -> torch.Tensor:
        d, nh, dh = self.dim, self.heads, self.dim // self.heads
        num_roots = root_idx.shape[0]
        w_q, w_k, w_v, w_o = self.node.weight.split(d)
        b_q, b_k, b_v, b_o = self.node.bias.split(d)
        q, out_own = torch.addmm(torch.cat([b_q, b_o]), h.index_select(0, root_idx),
                                 torch.cat([w_q, w_o]).t()).split(d, 1)
        q = (q + self.q_time(self.time(h.new_zeros(1)))).view(num_roots, nh, dh)
        layout = slot_layout(nbr_root, nbr_idx, num_roots)
        # slot parts (node h_u, time phi(dt), edge e_uv) with their W_k and W_v blocks [H, d/H, D_p]
        w_kv = [(w_k, w_v), self.kv_time.weight.split(d)]
        if self.kv_edge is not None:
            w_kv.append(self.kv_edge.weight.split(d))
        w_kv = [(w_kx.view(nh, dh, -1), w_vx.view(nh, dh, -1)) for w_kx, w_vx in w_kv]
        # keys and values are never built per slot: q.k = sum over parts (W_k^T q).x + q.b_k, and
        # sum att v = sum over parts W_v (sum att x) + b_v sum att, per head; projections run per root
        q_heads = q.transpose(0, 1)  # [H, R, d/H]
        q_parts = [torch.bmm(q_heads, w_kx).transpose(0, 1).contiguous() for w_kx, _ in w_kv]  # [R, H, D_p]
        offset = (q * b_k.view(nh, dh)).sum(2).unsqueeze(1)  # [R, 1, H]
        keep = dropout_scale((*layout.shape, nh), self.p, self.training, h.device)
        data = () if self.kv_edge is None else \
            ((layout.padded(nbr_feat).view(*layout.shape, -1), q_parts[2]),)  # padding: zero features
        sums, total = slot_attention(layout, offset, keep, (h, q_parts[0]),
                                     (layout.padded(nbr_dt), self.time.w, self.time.b, q_parts[1]), data,
                                     native=native.kernels() if self.fused else None)
        agg = total.unsqueeze(2) * b_v.view(nh, dh)  # [R, H, d/H]
        for a_x, (_, w_vx) in zip(sums, w_kv):
            agg = agg + torch.bmm(a_x.transpose(0, 1), w_vx.transpose(1, 2)).transpose(0, 1)
        out = torch.addmm(out_own, agg.reshape(num_roots, d), self.out.weight.t())
        return self.norm(F.relu(apply_dropout(out, self.p, self.training)))


class LinkPredictor(nn.Module):
    """score(u, v) = out(ReLU(W_s z_u + W_d z_v))."""

    fused = True  # without gradients on CPU: the C kernel of disttgl.models.native when it builds

    def __init__(self, dim: int):
        super().__init__()
        self.src, self.dst, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1)

    def forward(self, z: torch.Tensor, num_events: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z: [R, d] root embeddings [src | dst | neg]; returns pos [B] and neg [B, Q] scores."""
        b = num_events
        s = self.src(z[:b])
        d = self.dst(z[b:])
        if torch.is_autocast_enabled(z.device.type):
            # bf16: the two projections above ran in bf16; the scores are summed in float32, since
            # bf16's 8-bit mantissa would tie many of a positive's 49 negatives with it (MRR counts ties)
            with torch.autocast(z.device.type, enabled=False):
                return self._scores(s.float(), d.float(), b)
        return self._scores(s, d, b)

    def _scores(self, s: torch.Tensor, d: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        kernels = native.kernels() if self.fused and not torch.is_grad_enabled() and s.device.type == "cpu" \
            and s.dtype == torch.float32 else None
        if kernels is not None:  # evaluation's 49 negatives: no [B, 49, d] hidden layer in memory
            w, bias = self.out.weight[0], float(self.out.bias[0])
            return (kernels.link_scores(s, d[:b].unsqueeze(1), w, bias).squeeze(1),
                    kernels.link_scores(s, d[b:].view(b, -1, s.shape[1]), w, bias))
        pos = self.out(F.relu(s + d[:b])).squeeze(1)
        neg = self.out(F.relu(s.unsqueeze(1) + d[b:].view(b, -1, s.shape[1]))).squeeze(2)
        return pos, neg


class NodeEventModel(nn.Module):
    """What every memory model shares once it has node states h [U, d]: the node-side inputs added to
    them (projected raw node features and the frozen static memory, with ``static_dropout``) and the
    two heads over its root embeddings (:meth:`embed`, the subclass's): link scores (``forward``)
    or event-class logits (``classify``)."""

    cfg: ModelConfig

    def _build_inputs(self, cfg: ModelConfig) -> None:
        self.node_proj = _proj(cfg.node_dim, cfg.dim)
        self.static_proj = _proj(cfg.static_dim, cfg.dim)

    def add_node_inputs(self, h: torch.Tensor, nodes: torch.Tensor, feats: Features) -> torch.Tensor:
        """``h`` [n, d] of ``nodes`` plus their static memory and raw node features (where the model has them)."""
        if self.static_proj is not None:
            if feats.static is None:
                raise ValueError("model was built with static memory but none was given")
            h = h + self.static_proj(self._static_rows(nodes, feats.static))
        if self.node_proj is not None:
            h = h + self.node_proj(feats.node_feat.index_select(0, nodes))
        return h

    def _static_rows(self, nodes: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """The static memory rows of ``nodes``; in training each row is zeroed with ``static_dropout``.

        The table was fitted to the training events, so on them it is more telling than on new ones,
        and nodes without a training event have a zero row. Leaving rows out in training keeps the
        model from leaning on the table alone and shows it nodes it has no static memory for.
        """
        rows = static.index_select(0, nodes)
        p = self.cfg.static_dropout
        if self.training and p > 0:
            keep = torch.rand(rows.shape[0], 1, device=rows.device) >= p
            rows = rows * keep
        return rows

    def embed(self, batch: Batch, feats: Features, memory: torch.Tensor | None = None,
              mail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, batch: Batch, feats: Features, memory: torch.Tensor | None = None,
                mail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Scores pos [B], neg [B, Q] and the batch's new memory [U, d] (None for the table variant)."""
        z, new_memory = self.embed(batch, feats, memory, mail)
        pos, neg = required(self.predict, "link")(z, batch.num_events)
        return pos, neg, new_memory

    def classify(self, batch: Batch, feats: Features, memory: torch.Tensor | None = None,
                 mail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits [B, C] of the positive events and the batch's new memory [U, d]."""
        z, new_memory = self.embed(batch, feats, memory, mail)
        return required(self.classifier, "edge-class")(z, batch), new_memory


class TGN(NodeEventModel):
    """TGN/DistTGL model. ``memory="table"`` swaps the GRU memory for a learnable table (pretraining)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.memory == "gru":
            self.memory = GRUMemory(cfg.dim, cfg.edge_dim, cfg.time_dim)
        elif cfg.memory == "table":
            self.table = node_table(cfg)
        else:
            raise ValueError(f"unknown memory kind {cfg.memory!r} (gru or table)")
        self._build_inputs(cfg)
        self.attn = TemporalAttention(cfg.dim, cfg.edge_dim, cfg.time_dim, cfg.heads, cfg.dropout)
        self.predict, self.classifier = heads(cfg)

    def update_memory(self, batch: Batch, memory: torch.Tensor, mail: torch.Tensor,
                      feats: Features) -> torch.Tensor:
        """New memory [U, d] of every unique node from its stored memory/mail (GRU variant)."""
        dt = (batch.mail_t - batch.mem_t).float()  # float64 subtraction keeps large timestamps exact
        return self.memory(memory, mail, feats.edge_feat.index_select(0, batch.mail_eid), dt)

    def embed(self, batch: Batch, feats: Features, memory: torch.Tensor | None = None,
              mail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Root embeddings z [R, d] and the batch's new memory [U, d] (None for the table variant)."""
        if self.cfg.memory == "gru":
            if memory is None or mail is None:
                raise ValueError("the GRU model needs the batch's memory and mail")
            new_memory = self.update_memory(batch, memory, mail, feats)
            h = new_memory
        else:
            new_memory = None
            h = self.table(batch.nodes)
        h = self.add_node_inputs(h, batch.nodes, feats)
        nbr_feat = feats.edge_feat.index_select(0, batch.nbr_eid) if self.cfg.edge_dim else None
        z = self.attn(h, batch.root_idx, batch.nbr_root, batch.nbr_idx, nbr_feat, batch.nbr_dt.float())
        return z, new_memory


def node_table(cfg: ModelConfig) -> nn.Embedding:
    """The learnable per-node table of static pretraining (``memory="table"``)."""
    if cfg.num_nodes <= 0:
        raise ValueError("memory='table' needs num_nodes")
    table = nn.Embedding(cfg.num_nodes, cfg.dim)
    nn.init.normal_(table.weight, std=0.1)
    return table


def heads(cfg: ModelConfig) -> tuple[LinkPredictor | None, EdgeClassifier | None]:
    """(link predictor, edge classifier): the one the task needs (``cfg.classes``), the other None."""
    if cfg.classes:
        return None, EdgeClassifier(cfg.dim, cfg.time_dim, cfg.classes)
    return LinkPredictor(cfg.dim), None


def required(head: nn.Module | None, task: str) -> nn.Module:
    """``head``, or an error saying which task the model was built for (``ModelConfig.classes``)."""
    if head is None:
        built = "edge classification (ModelConfig.classes > 0)" if task == "link" else \
            "link prediction (ModelConfig.classes = 0)"
        raise ValueError(f"this model was built for {built}: it has no {task} head")
    return head


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
