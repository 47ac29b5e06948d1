"""The memory interface (:class:`disttgl.models.memory.Memory`) of an i x j x k trainer, served by
its copy's memory server (:mod:`disttgl.parallel.memory_server`) as the schedule says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from disttgl.cache.batch import Batch
from disttgl.models.memory import NodeMemory, write_rows
from disttgl.parallel.memory_server import MemoryClient
from disttgl.parallel.schedule import Step


@dataclass
class Hold:
    """One memory batch held for j iterations: its j batches (one per negative set) and, once read,
    the memory rows of the union of their nodes."""

    stream: int
    batches: list[Batch]
    nodes: torch.Tensor | None = None  # sorted unique node ids
    rows: torch.Tensor | None = None  # [n, 3d] memory‖mail


class ServedMemory:
    """The ``gather``/``write``/``reset`` interface of :class:`NodeMemory`, backed by the copy's
    memory server and the schedule: the first iteration of a hold reads the memory of all its
    batches' nodes at once; repeats reuse those rows; only the first iteration writes."""

    def __init__(self, client: MemoryClient, dim: int, device: torch.device):
        self.client, self.dim, self.device = client, dim, device
        self.hold: Hold | None = None
        self.step: Step | None = None

    def reset(self) -> None:  # the server resets on wraps; nothing for a trainer to do
        pass

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hold
        if h.rows is None:
            nodes = torch.unique(torch.cat([b.nodes.cpu() for b in h.batches]))
            h.nodes = nodes.to(self.device)
            h.rows = torch.from_numpy(self.client.read(h.stream, nodes.numpy())).to(self.device)
        rows = h.rows.index_select(0, torch.searchsorted(h.nodes, batch.nodes))
        return rows[:, :self.dim], rows[:, self.dim:]

    def read(self, batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        return (batch, *self.gather(batch))  # the server serves reads in schedule order: the clock holds

    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        if self.step is None or not self.step.writes:
            return
        nodes, mem, mail = write_rows(batch, new_memory)
        self.client.write(self.step.stream, nodes.cpu().numpy(), torch.cat([mem, mail], 1).cpu().numpy())


def table_state(table: np.ndarray, dim: int, device: torch.device) -> NodeMemory:
    t = torch.from_numpy(np.ascontiguousarray(table))
    return NodeMemory(t[:, :dim].contiguous().to(device), t[:, dim:].contiguous().to(device))


def buffer_capacity(meta: Any, j: int, num_nodes: int) -> int:
    """Rows a trainer ever reads at once: a hold's roots (2B positives, j·B negatives) and their
    sampled neighbours, bounded by N."""
    return max(1, min(num_nodes, meta.batch_size * (2 + j) * (1 + meta.neighbors)))
