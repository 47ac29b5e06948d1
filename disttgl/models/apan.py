"""APAN's memory updater (Wang et al., SIGMOD'21, as TGL's transformer memory updater configures it):
attention of a node's memory over its mailbox (docs/design.md §12).

For a node with memory m [d], mails x_s [d_mail] of ages a_s (reference time minus mail time) and
validity v_s, with H heads of d/H:

    q = W_q m + b_q,  k_s = W_k [x_s ‖ phi(a_s)] + b_k,  v_s = W_v [x_s ‖ phi(a_s)] + b_v
    score_{s,h} = LeakyReLU_0.2(q_h . k_{s,h})
    att_{.,h} = softmax over the valid mails (all zero when there is none), then dropout
    agg = ‖_h sum_s att_{s,h} v_{s,h}
    new memory = ReLU(dropout(W_o LayerNorm(agg + m) + b_o))

TGL attends over every slot, empty ones included (zero mails at time 0); here empty slots are
masked, so a node's new memory does not depend on how many slots it has yet to fill. The mailbox
itself (which nodes receive which mail) is :mod:`disttgl.models.mailbox`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from disttgl.models.kernels import float32_forward
from disttgl.models.tgn import TimeEncode


class MailAttention(nn.Module):
    """APAN's updater: the node's memory attends over its mailbox (equations in the module docstring)."""

    def __init__(self, dim: int, mail_dim: int, time_dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.p = heads, dropout
        self.time = TimeEncode(time_dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(mail_dim + time_dim, dim)
        self.v = nn.Linear(mail_dim + time_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)

    @float32_forward
    def forward(self, memory: torch.Tensor, mails: torch.Tensor, age: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """Args:
            memory: [U, d] stored memory of the updated nodes.
            mails: [U, S, d_mail] their mailboxes.
            age: [U, S] float32 reference time minus each mail's time.
            valid: [U, S] bool, False on empty slots.
        Returns: [U, d] new memory.
        """
        u, s = valid.shape
        d, nh = memory.shape[1], self.heads
        x = torch.cat([mails, self.time(age)], 2)
        q = self.q(memory).view(u, 1, nh, d // nh)
        k = self.k(x).view(u, s, nh, d // nh)
        v = self.v(x).view(u, s, nh, d // nh)
        score = F.leaky_relu((q * k).sum(3), 0.2)  # [U, S, H]
        att = masked_softmax(score, valid.unsqueeze(2))
        att = F.dropout(att, self.p, self.training)
        agg = (att.unsqueeze(3) * v).sum(1).reshape(u, d)
        return F.relu(F.dropout(self.mlp(self.norm(agg + memory)), self.p, self.training))


def masked_softmax(score: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 of ``score`` restricted to ``keep`` (broadcast); 0 where nothing is kept.

    Masked scores become -inf before the exponential, so a masked slot gets exactly 0 weight and
    no gradient, whatever finite or huge value it held."""
    masked = score.masked_fill(~keep, float("-inf"))
    top = masked.amax(1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # rows with nothing kept
    e = torch.exp(masked - top)
    return e / e.sum(1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
