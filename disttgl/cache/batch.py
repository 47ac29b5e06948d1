"""The in-memory mini-batch: what the sampler/cache produce and the model consumes.

All fields are torch tensors on one device. ``B`` positive events, ``Q`` negatives per positive
(1 for a train negative set, 49 for val/test), ``R = B * (2 + Q)`` roots laid out as
``[src (B) | dst (B) | neg (B*Q, row-major: neg[b, q] at 2B + b*Q + q)]``, ``U`` unique nodes,
``M`` sampled neighbour slots.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    eid: torch.Tensor  # int64 [B] event ids of the positives
    t: torch.Tensor  # float64 [B] event times
    src: torch.Tensor  # int64 [B]
    dst: torch.Tensor  # int64 [B]
    neg: torch.Tensor  # int64 [B, Q]
    nodes: torch.Tensor  # int64 [U] unique node ids of roots and neighbours
    root_idx: torch.Tensor  # int64 [R] index into ``nodes`` for every root
    nbr_root: torch.Tensor  # int64 [M] which root (0..R-1) each sampled neighbour belongs to
    nbr_idx: torch.Tensor  # int64 [M] index into ``nodes`` of the neighbour
    nbr_eid: torch.Tensor  # int64 [M] edge id (row into edge_feat)
    nbr_dt: torch.Tensor  # float32 [M] root time minus edge time (> 0)
    mem_t: torch.Tensor  # float64 [U] time of each unique node's memory before this memory batch
    mail_t: torch.Tensor  # float64 [U] time of its pending mail (0 if none)
    mail_eid: torch.Tensor  # int64 [U] edge of its pending mail (E, the zero row, if none)
    write_mask: torch.Tensor  # bool [2B] positives [src|dst] whose memory/mail this batch writes

    @property
    def num_events(self) -> int:
        return int(self.src.shape[0])

    @property
    def num_negatives(self) -> int:
        return int(self.neg.shape[1])

    @property
    def root_t(self) -> torch.Tensor:
        """float64 [R] the time of every root (negatives take their positive's time)."""
        q = self.num_negatives
        return torch.cat([self.t, self.t, self.t.repeat_interleave(q)])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})
