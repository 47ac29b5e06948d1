"""The seeded RNGs of a run, and their state as a checkpoint holds it."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every RNG's state as tensors and plain values, which ``torch.load(weights_only=True)`` reads."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"numpy_generator": rng.bit_generator.state, "torch": torch.get_rng_state(),
             "python": [version, list(internal), gauss],
             "numpy_global": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                              "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state["numpy_generator"]
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    g = state["numpy_global"]
    np.random.set_state((g["name"], g["keys"].numpy().astype(np.uint32), g["pos"], g["has_gauss"],
                         g["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
