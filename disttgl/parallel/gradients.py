"""The i x j x k trainers' optimizer step: gradients averaged over all ranks before every step.

Idle ranks (warm-up, a short last memory batch) join the all-reduce with zero gradients and take the
same step, so weights stay identical everywhere; the mean is over the ranks active in the iteration.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class AllReduceOptimizer:
    """Wraps an optimizer: ``step`` first averages gradients over all ranks (one flat all-reduce),
    dividing by the number of ranks active in the current iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], active: Any):
        self.optimizer, self.params, self.active = optimizer, params, active

    @property
    def param_groups(self):  # noqa: ANN201
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        allreduce_grads(self.params, self.active())
        self.optimizer.step()

    def idle_step(self) -> None:
        """An iteration without a batch: contribute zeros, take the same step as everyone."""
        self.optimizer.zero_grad(set_to_none=True)
        self.step()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def allreduce_grads(params: list[torch.nn.Parameter], active: int) -> None:
    """grad <- (sum over ranks of grad) / active, for every parameter (missing grads count as zero)."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= max(active, 1)
    off = 0
    for p in params:
        n = p.numel()
        p.grad = flat[off:off + n].view_as(p).clone()
        off += n
