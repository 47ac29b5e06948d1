"""``disttgl train GRAPH CACHE --out RUN_DIR``: train a TGN (optionally with frozen static memory).

One process by default; ``--parallelism IxJxK`` under torchrun runs one rank of DistTGL's i x j x k
training (``torchrun --nproc-per-node W -m disttgl.train ...``, or ``disttgl launch``). Every flag's
default is the field's default in :class:`~disttgl.train.config.TrainConfig`.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import fields
from typing import Any

from disttgl.errors import DataError
from disttgl.layout import parse_parallelism
from disttgl.train.config import PRESETS, PretrainConfig, TrainConfig

log = logging.getLogger(__name__)

# flag -> help; type and default come from the dataclass field of the same name
_COMMON_HELP = {
    "epochs": "epochs to train",
    "device": "cpu, cuda or cuda:N",
    "seed": "seed of every RNG (negative sets, dropout, weights)",
    "lr": "Adam's learning rate (default: derived from the training batches an epoch, 5e-4, more on "
          "streams of under 60 batches, up to 1e-3; logged)",
    "dim": "memory/embedding size",
    "time_dim": "time encoding size",
    "heads": "attention heads",
    "dropout": "dropout of the attention and output layers",
    "memory": "memory model: gru (TGN: GRU memory, attention over neighbours), rnn (JODIE: RNN memory, "
              "time-projected embedding) or apan (APAN: attention over a mailbox of mails delivered to "
              "sampled neighbours); pretrain: the model whose embedding the table feeds",
    "threads": "torch CPU threads (default: torch's; i x j x k: the cores shared between a machine's trainers)",
    "prefetch": "batches read ahead",
    "precision": "fp32, or bf16: bf16 autocast for the matmuls (CPU with AVX-512 BF16/AMX, or CUDA); "
                 "weights, optimizer state, memory and mail stay fp32",
}
_TRAIN_HELP = {
    "task": "link (link prediction: MRR/AP against the cache's negatives) or edge-class (the class of each "
            "event from the graph's events/label: cross-entropy, F1-micro/F1-macro; --loss then does not apply, "
            "except to a multi-label 0/1 label matrix: bce per class, or ce as DistTGL)",
    "static": "frozen static memory (.h5 from `disttgl pretrain`)",
    "static_dropout": "training: chance that a node's static memory row is left out",
    "mailbox_size": "--memory apan: mails kept per node",
    "parallelism": "i x j x k or auto; more than one rank runs under torchrun: "
                   "torchrun --nproc-per-node W -m disttgl.train ... --parallelism IxJxK",
    "timeout": "i x j x k: seconds a rank waits for another (collectives, memory server)",
    "eval": "disttgl (every epoch: MRR/AP with the cache's negatives); tgb: also TGB's protocol "
            "(tgb_mrr, tgb_hits@10) on the best epoch at the end",
    "tgb_negatives": "--eval tgb: negatives file from `disttgl convert --format tgb` or `disttgl tgb-negatives` "
                     "(default: tgb_negatives.h5 beside GRAPH)",
    "tgb_batch_size": "--eval tgb: positives per evaluation batch",
    "staleness": "MSPipe: batch i reads memory with the writes of batches <= i - K at most (1: sequential; "
                 "auto: the minimal bound from --stage-times)",
    "stage_times": "stage times from `disttgl profile` (auto's K; memory versions of the delayed fetch)",
    "mitigation": "none or similar: MSPipe's staleness mitigation (needs --similar)",
    "similar": "similar-nodes file from `disttgl similar`",
    "mitigation_lambda": "mitigation: weight of a stale root's own memory",
    "mitigation_top": "mitigation: share of a batch's roots treated as stale",
    "pipeline": "off, threads (memory fetch on a background thread) or streams (threads, and the batch copies and memory "
                "fetch on their own CUDA streams; --device cuda)",
}


def _add_fields(parser: argparse.ArgumentParser, config: type, helps: dict[str, str]) -> None:
    """One ``--name`` per field in ``helps``, typed and defaulted by the dataclass."""
    by_name = {f.name: f for f in fields(config)}
    for name, help_text in helps.items():
        f = by_name[name]
        kind = {"int": int, "float": float}.get(str(f.type).split(" | ")[0].strip("'"), str)
        shown = "" if f.default is None or "default" in help_text else f" (default: {f.default})"
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=f.default, help=help_text + shown)


def add_common_arguments(parser: argparse.ArgumentParser, config: type = TrainConfig) -> None:
    """Arguments shared by ``train`` and ``pretrain``."""
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("cache", help="batch cache (.h5 from `disttgl batches`)")
    _add_fields(parser, config, _COMMON_HELP)
    parser.add_argument("--loss", choices=("ce", "bce"), default=None,
                        help=f"binary CE (TGN; default: {TrainConfig.loss}) or softmax cross-entropy over "
                             "[pos, negs] (DistTGL)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a published system's settings, under any flag given (disttgl: lr 1e-4, loss ce; "
                             "tgb: TGB's TGN example, lr 1e-4, loss bce, a cache of batches of 200)")
    parser.add_argument("--tgb-compat", dest="preset", action="store_const", const="tgb",
                        help="the same as --preset tgb: a like-for-like comparison with TGB's TGN")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, summary.json)")
    _add_fields(parser, TrainConfig, _TRAIN_HELP)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")


def config_from_args(args: argparse.Namespace, config: type = TrainConfig, **extra: Any) -> Any:
    """The configuration: a flag given wins, then ``--preset``, then the dataclass's default."""
    preset = PRESETS.get(args.preset or "", {})
    lr = args.lr if args.lr is not None else preset.get("lr", config.lr)
    loss = args.loss or preset.get("loss", config.loss)
    common = {k: getattr(args, k) for k in _COMMON_HELP}
    return config(graph=args.graph, cache=args.cache, out=args.out, **{**common, "lr": lr}, loss=loss,
                  progress=not args.no_progress, **extra)


def check_preset_cache(args: argparse.Namespace) -> None:
    """A preset that fixes the batch size (``tgb``: 200) refuses a cache built with another."""
    want = PRESETS.get(args.preset or "", {}).get("batch_size")
    if want is None:
        return
    from disttgl.cache.reader import open_cache

    with open_cache(args.cache, graph_path=args.graph) as cache:
        have = cache.meta.batch_size
    if have != want:
        raise DataError(args.cache, f"--preset {args.preset} trains on batches of {want}, this cache holds batches "
                                    f"of {have}: build one with `disttgl batches --batch-size {want}`")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The ``train`` command's configuration (single process or one rank of i x j x k)."""
    return config_from_args(args, resume=args.resume, **{k: getattr(args, k) for k in _TRAIN_HELP})


def run(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    cfg.check()  # a bad setting leaves no run directory behind
    check_preset_cache(args)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    layout = parse_parallelism(cfg.parallelism)  # None: auto
    if layout is None and ranks == 1:
        log.info("parallelism auto -> 1x1x1: one process (start more with torchrun --nproc-per-node)")
    if (layout is None and ranks == 1) or (layout is not None and layout.world == 1):
        if ranks > 1:
            raise DataError(None, f"--parallelism {layout} is one process, torchrun started {ranks}")
        if cfg.pipelined:
            from disttgl.pipeline.strategy import train_pipelined

            train_pipelined(cfg)
            return 0
        from disttgl.train.single import train

        train(cfg)
        return 0
    if cfg.pipelined:  # --parallelism auto on several ranks: the i x j x k trainers take a fixed k only
        from disttgl.parallel.staleness import check_served

        check_served(cfg.staleness, cfg.stage_times, cfg.mitigation, cfg.pipeline, cfg.parallelism)
    if cfg.task == "edge-class" and os.environ.get("RANK", "0") == "0":
        # rank 0 creates the run directory before the ranks load the graph: bad labels fail first
        from disttgl.data.graph_store import read_labels
        from disttgl.train.task import label_classes

        label_classes(*read_labels(cfg.graph), cfg.graph)
    # imported here: a one-process run never loads torch.distributed and the memory server
    from disttgl.parallel.strategy import train_parallel

    return train_parallel(cfg)


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    check_preset_cache(args)
    return config_from_args(args, PretrainConfig, patience=args.patience)
