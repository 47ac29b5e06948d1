"""``disttgl train GRAPH CACHE --out RUN_DIR``: train a TGN (optionally with frozen static memory)."""

from __future__ import annotations

import argparse
import os

from disttgl.train.fit import PRESETS, TrainConfig

DEFAULTS = TrainConfig(graph="", cache="", out="")  # the CLI's defaults are the config's


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``pretrain``."""
    d = DEFAULTS
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("cache", help="batch cache (.h5 from `disttgl batches`)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam's learning rate (default: derived from the training batches an epoch, "
                             "5e-4, more on streams of under 60 batches, up to 1e-3; logged)")
    parser.add_argument("--dim", type=int, default=d.dim, help="memory/embedding size")
    parser.add_argument("--time-dim", type=int, default=d.time_dim)
    parser.add_argument("--heads", type=int, default=d.heads)
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument("--loss", choices=("ce", "bce"), default=None,
                        help=f"binary CE (TGN; default: {d.loss}) or softmax cross-entropy over [pos, negs] (DistTGL)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a published system's settings, under any flag given (disttgl: lr 1e-4, loss ce)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--prefetch", type=int, default=d.prefetch, help="batches read ahead")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, summary.json)")
    parser.add_argument("--static", default=None, help="frozen static memory (.h5 from `disttgl pretrain`)")
    parser.add_argument("--static-dropout", type=float, default=DEFAULTS.static_dropout,
                        help="training: chance that a node's static memory row is left out")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--parallelism", default="1x1x1",
                        help="i x j x k or auto; more than one rank runs under torchrun: "
                             "torchrun --nproc-per-node W -m disttgl.train ... --parallelism IxJxK")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="parallel runs: seconds a rank waits for another (collectives, memory server)")


def config_from_args(args: argparse.Namespace, **extra: object) -> TrainConfig:
    """The configuration: a flag given wins, then ``--preset``, then the dataclass's default."""
    preset = PRESETS.get(args.preset or "", {})
    lr = args.lr if args.lr is not None else preset.get("lr", DEFAULTS.lr)
    loss = args.loss or preset.get("loss", DEFAULTS.loss)
    return TrainConfig(graph=args.graph, cache=args.cache, out=args.out, epochs=args.epochs, device=args.device,
                       seed=args.seed, lr=lr, dim=args.dim, time_dim=args.time_dim, heads=args.heads,
                       dropout=args.dropout, loss=loss, threads=args.threads, prefetch=args.prefetch,
                       progress=not args.no_progress, **extra)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The ``train`` command's configuration (single process or one rank of i x j x k)."""
    return config_from_args(args, static=args.static, static_dropout=args.static_dropout, resume=args.resume,
                            parallelism=args.parallelism)


def run(args: argparse.Namespace) -> int:
    if args.parallelism.replace(" ", "") not in ("1x1x1", "1") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from disttgl.parallel.scheduled import run as run_parallel  # i x j x k trainers, memory servers

        return run_parallel(args)
    from disttgl.train.fit import train

    train(train_config(args))
    return 0
