"""One averaging round as one vector (docs/design.md §14.3).

Every trainer in the round contributes a float64 vector: its weights times c (c = 1 when it
trained since its last average, 0 when it only just joined or healed) and, one slot per part, its
presence, its c, its steps and events since the last round, and its wish to stop.
One SUM allreduce over the quorum gives the sum of the contributed weights and everything the
round's record needs, identical on every participant; the mean is that float64 sum over the
number of contributors, cast back to each weight's dtype. Only weights (the model's floating
state) travel: optimizer state, memory and RNGs stay with their trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STATS = ("present", "contributed", "steps", "events")  # one slot per part each


def weight_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The entries averaged: the floating-point tensors of a model's state dict, in its order."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]


@dataclass
class Contribution:
    """One trainer's share of a round."""

    part: int
    contribute: bool  # trained since its last average
    steps: int = 0
    events: int = 0
    stop: bool = False  # past the deadline or at the last round: the round ends the run


def pack(state: dict[str, torch.Tensor], keys: list[str], parts: int, c: Contribution) -> torch.Tensor:
    """The float64 vector a trainer adds to the round's allreduce.

    Args:
        state: the model's state dict.
        keys: :func:`weight_keys` of it (the same on every trainer).
        parts: P (the slots per statistic).
        c: this trainer's contribution.
    """
    weights = torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in keys]) if keys \
        else torch.zeros(0, dtype=torch.float64)
    if not c.contribute:
        weights = torch.zeros_like(weights)
    stats = torch.zeros(len(STATS), parts, dtype=torch.float64)
    stats[:, c.part] = torch.tensor([1.0, float(c.contribute), c.steps, c.events], dtype=torch.float64)
    return torch.cat([weights, stats.reshape(-1), torch.tensor([float(c.stop)], dtype=torch.float64)])


@dataclass
class RoundResult:
    """What a round's summed vector says (the same on every participant)."""

    mean: dict[str, torch.Tensor] | None  # the averaged weights, None when nobody contributed
    present: list[int]  # parts in the round
    contributors: list[int]  # parts whose weights were averaged
    steps: dict[int, int]
    events: dict[int, int]
    stop: bool


def unpack(total: torch.Tensor, state: dict[str, torch.Tensor], keys: list[str], parts: int) -> RoundResult:
    """Read a round's summed vector; ``state`` gives the shapes and dtypes of the weights.

    Args:
        total: the allreduced (summed) vector.
        state: a state dict of the model (shapes and dtypes only).
        keys: :func:`weight_keys`.
        parts: P.
    """
    sizes = [state[k].numel() for k in keys]
    n = sum(sizes)
    stats = total[n:n + len(STATS) * parts].reshape(len(STATS), parts)
    present = [p for p in range(parts) if stats[0, p] > 0.5]
    contributors = [p for p in range(parts) if stats[1, p] > 0.5]
    mean = None
    if contributors:
        flat = total[:n] / len(contributors)
        mean = {k: chunk.reshape(state[k].shape).to(state[k].dtype)
                for k, chunk in zip(keys, torch.split(flat, sizes))}
    return RoundResult(mean=mean, present=present, contributors=contributors,
                       steps={p: int(stats[2, p]) for p in present}, events={p: int(stats[3, p]) for p in present},
                       stop=bool(total[-1] > 0.5))
