"""JODIE's pieces (Kumar et al., KDD'19, as configured in TGL): an RNN memory updater and the
time projection of the embedding (docs/design.md §12).

- :class:`RNNMemory`: new memory = tanh(W_ih x + b_ih + W_hh m + b_hh) (``nn.RNNCell``) on the
  GRU's input x = [mail ‖ edge_feat[mail_eid] ‖ phi(mail_t - mem_t)];
- :class:`TimeProjection`: z = h ⊙ (1 + w Δ + b) with Δ = (t - τ) / (t + 1), t the root's time and
  τ the time of the node's memory after the update (its last event, ``mail_t``). TGL's
  ``JODIETimeEmbedding`` is a Linear(1, d) whose weight and bias are drawn from N(0, 1) (JODIE's
  NormalLinear: std 1/sqrt(fan_in) with fan_in 1); w and b here are that weight and bias.
"""

from __future__ import annotations

import torch
from torch import nn

from disttgl.models.kernels import float32_forward
from disttgl.models.tgn import TimeEncode


class RNNMemory(nn.Module):
    """new memory = RNNCell_tanh([mail ‖ mail_feat ‖ phi(dt)], memory)."""

    def __init__(self, dim: int, edge_dim: int, time_dim: int):
        super().__init__()
        self.time = TimeEncode(time_dim)
        self.rnn = nn.RNNCell(2 * dim + edge_dim + time_dim, dim)

    @float32_forward
    def forward(self, memory: torch.Tensor, mail: torch.Tensor, mail_feat: torch.Tensor,
                dt: torch.Tensor) -> torch.Tensor:
        """Args:
            memory: [U, d] stored memory.
            mail: [U, 2d] pending mail.
            mail_feat: [U, d_e] edge features of the mail's event.
            dt: [U] float32 mail_t - mem_t.
        """
        return self.rnn(torch.cat([mail, mail_feat, self.time(dt)], 1), memory)


class TimeProjection(nn.Module):
    """z = h ⊙ (1 + w Δ + b); w, b ~ N(0, 1) at init (TGL's JODIE time embedding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim))
        self.b = nn.Parameter(torch.randn(dim))

    def forward(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Args:
            h: [R, d] root embeddings before the projection.
            delta: [R] float32 normalised time since the memory (:func:`time_delta`).
        """
        return h * (1 + torch.addcmul(self.b, delta.unsqueeze(1), self.w))


def time_delta(root_t: torch.Tensor, memory_t: torch.Tensor) -> torch.Tensor:
    """Δ = (t - τ) / (t + 1) in float64 (large timestamps stay exact), returned as float32.

    Args:
        root_t: [R] float64 time of every root.
        memory_t: [R] float64 time of the root node's memory after the update.
    """
    return ((root_t - memory_t) / (root_t + 1)).float()
