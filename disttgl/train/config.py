"""PLACEHOLDER from the workflow branch (h-workflow), to be replaced at merge by the train rewrite's
own ``disttgl/train/config.py``: only the defaults that tests/test_workflow.py compares with the
workflow schema's, with the values the rewrite announced. Nothing imports it but that test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    epochs: int = 10
    device: str = "cpu"
    seed: int = 0
    lr: float | None = None
    dim: int = 100
    time_dim: int = 100
    heads: int = 2
    dropout: float = 0.2
    static_dropout: float = 0.8
    loss: str = "bce"
    timeout: float = 300.0
    parallelism: str = "1x1x1"


@dataclass
class PretrainConfig(TrainConfig):
    epochs: int = 30
    patience: int = 3
