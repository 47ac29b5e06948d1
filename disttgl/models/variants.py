"""JODIE and APAN beside TGN, and the one place a model and its memory are built from a ModelConfig
(docs/design.md §12).

:class:`MemoryModel` embeds every root from its own node's updated memory, with no attention over
neighbours: the update runs once per unique root node (the batch's sampled neighbours are not
embedded, so their memory is never computed), then

    h = new memory (+ P_s static + P_v node features, as TGN's),  z = LayerNorm(h)   (TGL's identity layer)
    JODIE: z <- z ⊙ (1 + w Δ + b)  (:mod:`disttgl.models.jodie`);  APAN: z as is

and TGN's link predictor scores z. The returned new memory is [U, d] over all the batch's nodes
(rows of non-root nodes: their stored memory), as the memories' ``write`` expects; only the
positive roots of ``write_mask`` are ever written.
"""

from __future__ import annotations

import torch
from torch import nn

from disttgl.cache.batch import Batch
from disttgl.models.apan import MailAttention
from disttgl.models.jodie import RNNMemory, TimeProjection, time_delta
from disttgl.models.mailbox import MailboxMemory, root_nodes, unpack_mail
from disttgl.models.memory import Memory, NodeMemory
from disttgl.models.tgn import TGN, Features, ModelConfig, NodeEventModel, heads, node_table

# the embedding head each memory kind trains with (a table feeds the head of the kind it stands for)
HEADS = {"gru": "tgn", "table": "tgn", "rnn": "jodie", "apan": "apan"}


def head_of(cfg: ModelConfig) -> str:
    """The embedding head: ``cfg.head``, or the memory kind's own."""
    if cfg.memory not in HEADS:
        raise ValueError(f"unknown memory kind {cfg.memory!r} (gru, rnn, apan or table)")
    return cfg.head or HEADS[cfg.memory]


def build_model(cfg: ModelConfig) -> nn.Module:
    """TGN (``memory`` gru, or table with TGN's head) or :class:`MemoryModel` (rnn, apan, or a table
    with their head). Every model is called ``model(batch, feats, memory, mail) -> (pos, neg, new_memory)``,
    or, built with ``cfg.classes`` (edge classification), ``model.classify(...) -> (logits, new_memory)``."""
    return TGN(cfg) if head_of(cfg) == "tgn" else MemoryModel(cfg)


def build_memory(cfg: ModelConfig, edge_feat: torch.Tensor, device: torch.device | str | None = None
                 ) -> Memory | None:
    """The node memory the model of ``cfg`` reads: NodeMemory (gru, rnn), MailboxMemory (apan),
    None (table).

    Args:
        cfg: the model's configuration (``num_nodes``, ``dim``, ``mailbox_size``).
        edge_feat: [E + 1, d_e] edge features (the mailbox reads its mails' features from them).
        device: where the memory lives.
    """
    kind = cfg.memory
    if kind in ("gru", "rnn"):
        return NodeMemory.zeros(cfg.num_nodes, cfg.dim, device)
    if kind == "apan":
        return MailboxMemory.zeros(cfg.num_nodes, cfg.dim, edge_feat, cfg.mailbox_size, device)
    if kind == "table":
        return None
    raise ValueError(f"unknown memory kind {kind!r} (gru, rnn, apan or table)")


class MemoryModel(NodeEventModel):
    """JODIE (``memory="rnn"``) or APAN (``memory="apan"``); ``memory="table"`` with head jodie or
    apan swaps the updater for a learnable per-node table (static pretraining)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg, self.kind = cfg, head_of(cfg)
        if self.kind not in ("jodie", "apan"):
            raise ValueError(f"MemoryModel embeds with the jodie or apan head, got {self.kind!r}")
        if cfg.memory == "rnn" and self.kind == "jodie":
            self.memory = RNNMemory(cfg.dim, cfg.edge_dim, cfg.time_dim)
        elif cfg.memory == "apan" and self.kind == "apan":
            self.memory = MailAttention(cfg.dim, 2 * cfg.dim + cfg.edge_dim, cfg.time_dim, cfg.heads, cfg.dropout)
        elif cfg.memory == "table":
            self.table = node_table(cfg)
        else:
            raise ValueError(f"memory {cfg.memory!r} does not go with the {self.kind!r} head")
        self._build_inputs(cfg)
        self.norm = nn.LayerNorm(cfg.dim)
        self.project = TimeProjection(cfg.dim) if self.kind == "jodie" else None
        self.predict, self.classifier = heads(cfg)  # TGN's link predictor, or the edge classifier

    def update_memory(self, batch: Batch, rows: torch.Tensor, memory: torch.Tensor, mail: torch.Tensor,
                      feats: Features) -> torch.Tensor:
        """New memory [U_r, d] of the root nodes ``rows`` (indices into ``batch.nodes``)."""
        own = memory.index_select(0, rows)
        if self.cfg.memory == "rnn":
            dt = (batch.mail_t[rows] - batch.mem_t[rows]).float()  # float64 subtraction, as TGN's
            return self.memory(own, mail.index_select(0, rows),
                               feats.edge_feat.index_select(0, batch.mail_eid[rows]), dt)
        if mail.shape[0] != rows.shape[0]:
            raise ValueError(f"APAN needs the mailboxes of the batch's {rows.shape[0]} root nodes "
                             f"(MailboxMemory.gather), got {mail.shape[0]} rows")
        mails, age, valid = unpack_mail(mail)
        return self.memory(own, mails, age, valid)

    def embed(self, batch: Batch, feats: Features, memory: torch.Tensor | None = None,
              mail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Root embeddings z [R, d] and the batch's new memory [U, d] (None for the table)."""
        rows, inverse = root_nodes(batch)
        nodes = batch.nodes[rows]
        if self.cfg.memory == "table":
            new_memory = None
            h = self.table(nodes)
        else:
            if memory is None or mail is None:
                raise ValueError(f"the {self.kind} model needs the batch's memory and mail")
            h = self.update_memory(batch, rows, memory, mail, feats)
            new_memory = memory.index_copy(0, rows, h)
        h = self.add_node_inputs(h, nodes, feats)
        z = self.norm(h).index_select(0, inverse)
        if self.project is not None:
            z = self.project(z, time_delta(batch.root_t, batch.mail_t[batch.root_idx]))
        return z, new_memory
