"""The training and pretraining settings: the one source of their defaults.

The command line (``disttgl train``/``pretrain`` (:mod:`disttgl.commands`)) takes its flags' defaults from these dataclasses,
the model's hyperparameter defaults come from :class:`~disttgl.models.tgn.ModelConfig`, and the
workflow schema's defaults are checked against both (``tests/test_workflow.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from disttgl.errors import DataError
from disttgl.models.tgn import ModelConfig
from disttgl.layout import parse_parallelism
from disttgl.parallel.staleness import check_served
from disttgl.pipeline.plan import parse_staleness
from disttgl.train.precision import check_precision
from disttgl.train.task import TASKS

log = logging.getLogger(__name__)

_MODEL = ModelConfig()
MEMORIES = ("gru", "rnn", "apan")  # the memory kinds a run trains (ModelConfig's "table" is pretraining's)


@dataclass
class TrainConfig:
    graph: str
    cache: str
    out: str  # run directory (train) or static memory file (pretrain)
    static: str | None = None  # frozen static memory (.h5 from pretrain)
    static_dropout: float = 0.8  # training: chance a node's static row is left out (0: DistTGL, and ModelConfig's)
    epochs: int = 10
    device: str = "cpu"
    seed: int = 0
    lr: float | None = None  # None: derived from the training batches per epoch (derive_lr)
    dim: int = _MODEL.dim
    time_dim: int = _MODEL.time_dim
    heads: int = _MODEL.heads
    dropout: float = _MODEL.dropout
    memory: str = _MODEL.memory  # "gru" (TGN), "rnn" (JODIE), "apan" (APAN): docs/design.md §10
    mailbox_size: int = _MODEL.mailbox_size  # memory "apan": mails kept per node
    loss: str = "bce"  # TGN's binary CE: best measured AP (1 neg); DistTGL's softmax CE: preset "disttgl"
    task: str = "link"  # link prediction, or edge-class: the class of each event (events/label), §13
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    prefetch: int = 4
    resume: bool = False
    parallelism: str = "1x1x1"  # i x j x k, or auto (from the ranks torchrun started)
    timeout: float = 300.0  # i x j x k: seconds a rank waits for another (collectives, memory server)
    eval: str = "disttgl"  # "tgb": also TGB's protocol on the best epoch at the end (disttgl.tgb.final_eval)
    tgb_negatives: str | None = None  # --eval tgb: the negatives file (None: tgb_negatives.h5 beside the graph)
    tgb_batch_size: int = 200  # --eval tgb: positives per evaluation batch (TGB's examples: 200)
    # MSPipe (disttgl.pipeline): batch i reads the memory holding the writes of batches <= i - k at most
    staleness: str = "1"  # 1 (sequential), K, or auto (from stage_times)
    stage_times: str | None = None  # `disttgl profile` JSON: auto's k and the delayed-fetch versions
    mitigation: str = "none"  # none | similar (MSPipe's staleness mitigation, needs `similar`)
    similar: str | None = None  # `disttgl similar` file
    mitigation_lambda: float = 0.9  # weight of a stale root's own memory (MSPipe's code: 0.9)
    mitigation_top: float = 0.01  # share of a batch's roots treated as stale (MSPipe: the top 1 %)
    pipeline: str = "off"  # off | threads (background memory fetch) | streams (threads plus CUDA streams; --device cuda)
    precision: str = "fp32"  # fp32 | bf16: autocast for the matmuls; weights, Adam, memory stay fp32 (§4.8)
    progress: bool = True

    def check(self) -> None:
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise DataError(None, f"--lr must be a finite number >= 0, got {self.lr}")
        if self.loss not in ("ce", "bce"):
            raise DataError(None, f"--loss must be ce or bce, got {self.loss!r}")
        self.check_task()
        if self.epochs < 1:
            raise DataError(None, f"--epochs must be >= 1, got {self.epochs}")
        for name in ("dropout", "static_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise DataError(None, f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.memory not in MEMORIES:
            raise DataError(None, f"--memory must be gru, rnn or apan, got {self.memory!r}")
        if self.mailbox_size < 1:
            raise DataError(None, f"--mailbox-size must be >= 1, got {self.mailbox_size}")
        if self.memory == "apan" and self.eval == "tgb":
            raise DataError(None, "--eval tgb keeps the best epoch's memory and mail, not a mailbox: it does not "
                                  "support --memory apan yet")
        if self.dim % self.heads:
            raise DataError(None, f"--dim {self.dim} must be divisible by --heads {self.heads}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise DataError(None, f"--timeout must be a number of seconds > 0, got {self.timeout}")
        parse_parallelism(self.parallelism)
        if self.eval not in ("disttgl", "tgb"):
            raise DataError(None, f"--eval must be disttgl or tgb, got {self.eval!r}")
        if self.tgb_batch_size < 1:
            raise DataError(None, f"--tgb-batch-size must be >= 1, got {self.tgb_batch_size}")
        self.check_pipeline()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise DataError(None, f"--device {self.device}: CUDA is not available on this machine")
        check_precision(self.precision, self.device)


    def check_task(self) -> None:
        if self.task not in TASKS:
            raise DataError(None, f"--task must be link or edge-class, got {self.task!r}")
        if self.task == "edge-class" and self.eval == "tgb":
            raise DataError(None, "--eval tgb is TGB's link-prediction protocol: it does not go with --task edge-class")
        if self.task == "edge-class" and self.pipelined:
            raise DataError(None, "--task edge-class with --staleness/--mitigation/--pipeline is not implemented "
                                  "yet (MSPipe's strategy trains link prediction)")

    def check_pipeline(self) -> None:
        parse_staleness(self.staleness)
        if str(self.staleness).strip().lower() == "auto" and not self.stage_times:
            raise DataError(None, "--staleness auto needs --stage-times (from `disttgl profile GRAPH CACHE --out ...`)")
        if self.mitigation not in ("none", "similar"):
            raise DataError(None, f"--mitigation must be none or similar, got {self.mitigation!r}")
        if self.mitigation == "similar" and not self.similar:
            raise DataError(None, "--mitigation similar needs --similar SIMILAR.h5 (from `disttgl similar`)")
        for name in ("mitigation_lambda", "mitigation_top"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(None, f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.pipeline not in ("off", "threads", "streams"):
            raise DataError(None, f"--pipeline must be off, threads or streams, got {self.pipeline!r}")
        if self.pipeline == "streams" and not str(self.device).startswith("cuda"):
            raise DataError(None, f"--pipeline streams runs the stages on CUDA streams: it needs --device cuda, "
                                  f"got --device {self.device} (on CPU, --pipeline threads overlaps the memory fetch)")
        layout = parse_parallelism(self.parallelism)
        if self.pipelined and layout is not None and layout.world > 1:  # i x j x k: fixed k only (§5.7)
            check_served(self.staleness, self.stage_times, self.mitigation, self.pipeline, self.parallelism)

    @property
    def pipelined(self) -> bool:
        """Whether MSPipe's strategy (disttgl.pipeline.strategy) runs: anything but sequential training."""
        return str(self.staleness) != "1" or self.stage_times is not None or self.mitigation != "none" \
            or self.pipeline != "off"


@dataclass
class PretrainConfig(TrainConfig):
    """Static-memory pretraining: early stopping on validation MRR ends it, ``epochs`` is a ceiling."""

    epochs: int = 30  # Wikipedia's best table came at epoch 19, early stop at 22
    patience: int = 3  # epochs without val MRR gain before stopping


# Named settings of published systems, applied under explicit flags (``--preset``).
PRESETS: dict[str, dict[str, Any]] = {
    "disttgl": {"lr": 1e-4, "loss": "ce"},  # DistTGL (SC'23): Adam 1e-4, softmax CE over [pos, negs]
    # TGB's TGN example: Adam 1e-4, BCE with one uniform negative per positive (disttgl's training
    # batches), batches of 200 (a property of the batch cache, which the command checks)
    "tgb": {"lr": 1e-4, "loss": "bce", "batch_size": 200},
}

# The derived learning rate: 5e-4 is the best measured on Wikipedia (184 training batches of 600 an
# epoch) and the base. A small stream takes few steps an epoch: below LR_FEW_BATCHES batches the lr
# grows as LR_FEW_BATCHES / batches, up to twice the base (the 24-batch embedded set learns within
# its 8 epochs at 1e-3). Mid-sized streams keep the base: CollegeMsg (70 batches) was worse and
# noisier at 8e-4 than at 3e-4 (docs/results.md).
LR_BASE, LR_FEW_BATCHES, LR_MAX_FACTOR = 5e-4, 60, 2.0


def derive_lr(train_batches: int) -> float:
    """Adam's lr for a stream of ``train_batches`` batches an epoch: LR_BASE, times
    LR_FEW_BATCHES / batches (at most LR_MAX_FACTOR) on streams of fewer batches."""
    factor = LR_FEW_BATCHES / max(train_batches, 1)
    return LR_BASE * min(LR_MAX_FACTOR, max(1.0, factor))


def resolve_lr(cfg: TrainConfig, train_batches: int, *, quiet: bool = False) -> float:
    """``cfg.lr``, or the derived one (logged, so a run says which it used)."""
    if cfg.lr is not None:
        return cfg.lr
    lr = derive_lr(train_batches)
    if not quiet:
        log.info("lr %.2g, derived from %d training batches an epoch (--lr sets it)", lr, train_batches)
    return lr
