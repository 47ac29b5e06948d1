"""The edge classifier head (``--task edge-class``, docs/design.md §13): class logits of every positive
event from its endpoints' embeddings and how fresh their memory is.

For event b = (s, d, t) with root embeddings z_s, z_d (the model's own, at time t):

    x = [z_s ‖ z_d ‖ φ(t − τ_s) ‖ φ(t − τ_d)],   logits = W_2 ReLU(W_1 x + b_1) + b_2

τ_v is the time of node v's last event before the batch (the batch's ``mail_t``; 0 for a node
without one), so φ(t − τ) tells the head how old the memory it reads is; φ is the head's own
learnable cosine encoding cos(w Δ + b), initialised as TGN's (w = 10^-linspace(0, 9, d), b = 0). The
event's own time enters only through these differences: an absolute φ(t) would have to extrapolate
to the test split's later times. DistTGL's head is one Linear on [z_s ‖ z_d]; the hidden layer is
TGN's link predictor's shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from disttgl.cache.batch import Batch
from disttgl.models.kernels import cos_encoding


class EdgeClassifier(nn.Module):
    """Class logits [B, C] of a batch's positive events from root embeddings z [R, d] (``[src | dst | ...]``).

    Args:
        dim: embedding size d.
        time_dim: size of the time encoding of each endpoint's memory age.
        classes: number of classes C (>= 2).
    """

    def __init__(self, dim: int, time_dim: int, classes: int):
        super().__init__()
        if classes < 2:
            raise ValueError(f"an edge classifier needs >= 2 classes, got {classes}")
        self.w = nn.Parameter(10.0 ** -torch.linspace(0, 9, time_dim))
        self.b = nn.Parameter(torch.zeros(time_dim))
        self.hidden = nn.Linear(2 * dim + 2 * time_dim, dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        b = batch.num_events
        age = batch.t.repeat(2) - batch.mail_t.index_select(0, batch.root_idx[:2 * b])  # float64: exact
        phi = cos_encoding(age.float(), self.w, self.b)  # [2B, time_dim]: src rows, then dst rows
        x = torch.cat([z[:b], z[b:2 * b], phi[:b], phi[b:]], 1)
        return self.out(F.relu(self.hidden(x)))
