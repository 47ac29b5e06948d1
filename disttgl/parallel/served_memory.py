"""The memory interface (:class:`disttgl.models.memory.Memory`) of an i x j x k trainer, served by
its copy's memory server (:mod:`disttgl.parallel.memory_server`) as the schedule says."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from disttgl.cache.batch import Batch
from disttgl.models.memory import NodeMemory, write_rows
from disttgl.parallel.memory_client import MemoryClient
from disttgl.parallel.schedule import Step


@dataclass
class Hold:
    """One memory batch held for j iterations: its j batches (one per negative set) and, once read,
    the memory rows of the union of their nodes."""

    stream: int
    batches: list[Batch]
    nodes: torch.Tensor | None = None  # sorted unique node ids
    rows: torch.Tensor | None = None  # [n, 3d] memory‖mail
    clock: torch.Tensor | None = None  # [n, 3] float64 mem_t, mail_t, mail_eid (staleness k > 1 only)


class ServedMemory:
    """The ``read``/``gather``/``write``/``reset`` interface of :class:`NodeMemory`, backed by the
    copy's memory server and the schedule: the first iteration of a hold reads the memory of all its
    batches' nodes at once; repeats reuse those rows; only the first iteration writes.

    With MSPipe's staleness ``k > 1`` the server answers with the state of k - 1 steps ago, and the
    clock beside it: :meth:`read` returns the batch with its clock fields (``mem_t``, ``mail_t``,
    ``mail_eid``, the cache's, which assume the previous step's state) replaced by the server's, as
    :class:`disttgl.pipeline.stale_memory.StaleMemory` does in one process (docs/design.md §5.7).
    With k = 1 the cache's clock is the read state's and the batch goes through unchanged.

    Args:
        client: this trainer's connection to its copy's server.
        dim: memory size d.
        device: where the rows go.
        staleness: MSPipe's k of the server's plan.
    """

    def __init__(self, client: MemoryClient, dim: int, device: torch.device, staleness: int = 1):
        self.client, self.dim, self.device, self.staleness = client, dim, device, staleness
        self.hold: Hold | None = None
        self.step: Step | None = None

    def reset(self) -> None:  # the server resets on wraps; nothing for a trainer to do
        pass

    def _rows(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.hold
        if h.rows is None:
            nodes = torch.unique(torch.cat([b.nodes.cpu() for b in h.batches]))
            h.nodes = nodes.to(self.device)
            if self.staleness > 1:
                rows, clock = self.client.read(h.stream, nodes.numpy(), clock=True)
                h.clock = torch.from_numpy(clock).to(self.device)
            else:
                rows = self.client.read(h.stream, nodes.numpy())
            h.rows = torch.from_numpy(rows).to(self.device)
        idx = torch.searchsorted(h.nodes, batch.nodes)
        return h.rows.index_select(0, idx), None if h.clock is None else h.clock.index_select(0, idx)

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        rows, _ = self._rows(batch)
        return rows[:, :self.dim], rows[:, self.dim:]

    def read(self, batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        rows, clock = self._rows(batch)
        if clock is not None:  # a stale read is stale in its times too
            batch = replace(batch, mem_t=clock[:, 0].to(batch.mem_t.dtype), mail_t=clock[:, 1].to(batch.mail_t.dtype),
                            mail_eid=clock[:, 2].to(batch.mail_eid.dtype))
        return batch, rows[:, :self.dim], rows[:, self.dim:]

    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        """Send the step's rows and their clock: mem_t <- the mail time ``batch`` (as read) held,
        mail_t <- t, mail_eid <- eid of the writing event (the cache's rule)."""
        if self.step is None or not self.step.writes:
            return
        nodes, mem, mail = write_rows(batch, new_memory)
        roots = batch.write_mask.nonzero().squeeze(1)
        event = roots % batch.num_events
        clock = torch.stack([batch.mail_t[batch.root_idx[roots]].double(), batch.t[event].double(),
                             batch.eid[event].double()], 1)
        self.client.write(self.step.stream, nodes.cpu().numpy(), torch.cat([mem, mail], 1).cpu().numpy(),
                          clock.cpu().numpy())


def table_state(table: np.ndarray, dim: int, device: torch.device) -> NodeMemory:
    t = torch.from_numpy(np.ascontiguousarray(table))
    return NodeMemory(t[:, :dim].contiguous().to(device), t[:, dim:].contiguous().to(device))


def buffer_capacity(meta: Any, j: int, num_nodes: int) -> int:
    """Rows a trainer ever reads at once: a hold's roots (2B positives, j·B negatives) and their
    sampled neighbours, bounded by N."""
    return max(1, min(num_nodes, meta.batch_size * (2 + j) * (1 + meta.neighbors)))
