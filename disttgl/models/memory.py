"""Node memory and mailbox, held outside the model.

``memory`` [N, d] and ``mail`` [N, 2d] are plain tensors; the per-node times and mail edges
(``mem_t``, ``mail_t``, ``mail_eid``) depend only on the data and come precomputed with every
batch. :class:`Memory` is what training needs of a memory: ``gather``/``write``/``reset``.
:class:`NodeMemory` holds it in this process; the i x j x k trainers' served memory
(:mod:`disttgl.parallel.served_memory`) implements the same three calls over the copy's memory
server, and later memories (staleness-bounded, per-partition) plug in at the same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from disttgl.cache.batch import Batch


class Memory(Protocol):
    """The node memory a training or evaluation pass reads and writes."""

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [U, d] and mail [U, 2d] of the batch's unique nodes (``batch.nodes``)."""

    def read(self, batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """The batch as read, memory and mail: a memory whose reads lag its writes
        (``disttgl.pipeline.stale_memory``) also replaces the batch's clock fields by the version read."""

    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        """Store the batch's updated memory [U, d] (detached) for the nodes it writes (``batch``: as read)."""

    def reset(self) -> None:
        """Forget everything: the start of an epoch."""


@dataclass
class NodeMemory:
    memory: torch.Tensor  # float32 [N, d]
    mail: torch.Tensor  # float32 [N, 2d]: [own memory ‖ partner's memory] after the node's last event

    @classmethod
    def zeros(cls, num_nodes: int, dim: int, device: torch.device | str | None = None) -> "NodeMemory":
        return cls(torch.zeros(num_nodes, dim, device=device), torch.zeros(num_nodes, 2 * dim, device=device))

    @property
    def dim(self) -> int:
        return int(self.memory.shape[1])

    def reset(self) -> None:
        self.memory.zero_()
        self.mail.zero_()

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [U, d] and mail [U, 2d] of the batch's unique nodes."""
        return self.memory.index_select(0, batch.nodes), self.mail.index_select(0, batch.nodes)

    def read(self, batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        return (batch, *self.gather(batch))  # always fresh: the cache's clock fields hold

    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        """Store the batch's updated memory [U, d] for the ``write_mask`` roots only (detached).

        The mask marks each node's last positive occurrence, so every written node appears once.
        """
        write_memory(self.memory, self.mail, batch, new_memory)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"memory": self.memory.cpu(), "mail": self.mail.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.memory.copy_(state["memory"])
        self.mail.copy_(state["mail"])


def write_rows(batch: Batch, new_memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(node ids [W], memory rows [W, d], mail rows [W, 2d]) that ``batch`` writes."""
    b = batch.num_events
    roots = batch.write_mask.nonzero().squeeze(1)  # in [0, 2B): [src | dst]
    partner = torch.where(roots < b, roots + b, roots - b)
    new_memory = new_memory.detach()
    own = new_memory[batch.root_idx[roots]]
    other = new_memory[batch.root_idx[partner]]
    return batch.nodes[batch.root_idx[roots]], own, torch.cat([own, other], 1)


def write_memory(memory: torch.Tensor, mail: torch.Tensor, batch: Batch, new_memory: torch.Tensor) -> None:
    nodes, mem_rows, mail_rows = write_rows(batch, new_memory)
    memory[nodes] = mem_rows.to(memory.dtype)
    mail[nodes] = mail_rows.to(mail.dtype)
