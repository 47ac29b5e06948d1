"""Collectives of the distributed snapshot step, with a byte counter (docs/design.md §11.6).

Everything goes through ``torch.distributed`` in the process group torchrun set up (gloo on CPU,
NCCL on CUDA): :meth:`Comm.all_to_all` wraps ``all_to_all_single`` on one flat tensor with per-rank
split sizes (on torch 2.13's gloo the single-tensor form takes uneven splits, the list form does
not, so callers concatenate and split), :class:`Exchange` makes it differentiable (its backward is
the reverse all-to-all of the gradients), and :meth:`Comm.all_reduce` sums a tensor over the ranks.

:class:`CommCounter` records, per collective name, the bytes this rank sent and received. An
all-to-all counts what really crosses between ranks (its own split is a local copy and is not
counted). An all-reduce's traffic is the backend's choice; it is counted as a ring all-reduce
(reduce-scatter then all-gather): 2 (P - 1) / P of the buffer sent and as much received per rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass
class CommCounter:
    """Bytes sent and received by this rank, per collective name."""

    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, sent: int, received: int) -> None:
        self.sent[name] = self.sent.get(name, 0) + int(sent)
        self.received[name] = self.received.get(name, 0) + int(received)

    def total_sent(self) -> int:
        return sum(self.sent.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{name: {"sent": bytes, "received": bytes}} in name order."""
        return {k: {"sent": self.sent[k], "received": self.received[k]} for k in sorted(self.sent)}


class Comm:
    """This rank's place in a process group and the counted collectives on it.

    Args:
        group: the process group (None: the default group torchrun's environment initialised).
        counter: where the bytes go (a fresh counter by default).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, counter: CommCounter | None = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.counter = counter if counter is not None else CommCounter()

    def all_to_all(self, x: torch.Tensor, send: Sequence[int], recv: Sequence[int], name: str) -> torch.Tensor:
        """Rank r's ``x`` (flat, ``send[q]`` elements for each rank q in order) -> the flat
        concatenation of what every rank q sent to r (``recv[q]`` elements from q)."""
        if len(send) != self.size or len(recv) != self.size or sum(send) != x.numel():
            raise ValueError(f"all-to-all {name}: splits {list(send)} / {list(recv)} for {x.numel()} elements "
                             f"on {self.size} ranks")
        out = x.new_empty(sum(recv))
        dist.all_to_all_single(out, x.contiguous(), list(map(int, recv)), list(map(int, send)), group=self.group)
        size = x.element_size()
        self.counter.add(name, (sum(send) - send[self.rank]) * size, (sum(recv) - recv[self.rank]) * size)
        return out

    def all_reduce(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place; returns it."""
        dist.all_reduce(x, group=self.group)
        ring = 2 * (self.size - 1) * x.numel() * x.element_size() // self.size
        self.counter.add(name, ring, ring)
        return x

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter], name: str = "grad_allreduce") -> None:
        """grad <- the sum over ranks of grad, for every parameter (a missing grad counts as zero), in
        one flat all-reduce: the ranks' partial gradients add up to the single-process gradient."""
        params = list(params)
        if not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.all_reduce(flat, name)
        off = 0
        for p in params:
            p.grad = flat[off:off + p.numel()].view_as(p).clone()
            off += p.numel()


class Exchange(torch.autograd.Function):
    """A differentiable all-to-all: forward sends ``send[q]`` elements of ``x`` to rank q; backward
    sends the gradients back the same way reversed (``recv`` becomes the send split). Every rank
    must call both, in the same order: its output has to reach each rank's loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: Sequence[int], recv: Sequence[int], comm: Comm,  # noqa: ANN001
                name: str) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.comm, ctx.name = list(send), list(recv), comm, name
        return comm.all_to_all(x, send, recv, name + "_forward")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        back = ctx.comm.all_to_all(grad.contiguous(), ctx.recv, ctx.send, ctx.name + "_backward")
        return back, None, None, None, None


def exchange(x: torch.Tensor, send: Sequence[int], recv: Sequence[int], comm: Comm, name: str) -> torch.Tensor:
    """:class:`Exchange` when gradients are recorded, the plain all-to-all (``name_forward``) otherwise."""
    if torch.is_grad_enabled() and x.requires_grad:
        return Exchange.apply(x, send, recv, comm, name)
    return comm.all_to_all(x, send, recv, name + "_forward")


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int
    world: int
    local_rank: int


def torchrun_env() -> TorchrunEnv | None:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them, None outside torchrun."""
    e = os.environ
    if "RANK" not in e or "WORLD_SIZE" not in e:
        return None
    return TorchrunEnv(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)))


def init_from_env(device: torch.device, timeout_s: float = 600.0) -> Comm:
    """Join torchrun's process group (env://): NCCL for a CUDA device, gloo otherwise."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kw)
    return Comm()
