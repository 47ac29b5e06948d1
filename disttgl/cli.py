"""``disttgl`` command line: one subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
only the chosen module is imported, so ``disttgl info`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from disttgl.errors import DataError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("disttgl.data.fetch", "download a registered dataset (checksummed, retried, atomic)"),
    "convert": ("disttgl.data.convert", "convert raw event files into the HDF5 graph store"),
    "synth": ("disttgl.data.synth", "generate the embedded synthetic dataset"),
    "info": ("disttgl.data.info", "summarise a graph store"),
    "export": ("disttgl.commands.export", "write a graph store as PyG TemporalData (.pt) or a TGB-style folder"),
    "datasets": ("disttgl.data.registry", "list the registered datasets"),
    "tgb-negatives": ("disttgl.tgb.command", "TGB's hist_rnd evaluation negatives for a graph store"),
    "batches": ("disttgl.cache.command", "precompute the mini-batch cache"),
    "pretrain": ("disttgl.commands.pretrain", "pretrain the static node memory"),
    "train": ("disttgl.commands.train", "train a TGN with (optional) static memory"),
    "profile": ("disttgl.pipeline.profile", "time MSPipe's five stages on real batches: τ, k_min, bottleneck"),
    "similar": ("disttgl.pipeline.similar_command", "the k most similar nodes of each node, for staleness mitigation"),
    "launch": ("disttgl.parallel.launch", "start i x j x k training: torchrun on one node, srun + torchrun per node under SLURM"),
    "partition": ("disttgl.tma.partition_command", "RandomTMA/SuperTMA: split a graph's nodes into parts, one graph store each"),
    "tma": ("disttgl.commands.tma", "RandomTMA/SuperTMA: one trainer per part, weights averaged on torchft every --sync-every"),
    "report": ("disttgl.report.command", "collect results into tables and plots"),
    "snapshots": ("disttgl.snapshot.command", "cut a graph store into snapshots (adjacency and differences)"),
    "snapshot-train": ("disttgl.snapshot.train_command", "train a snapshot DGNN (GCN + LSTM or TM-GCN)"),
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disttgl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    args = _parser(command).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        _parser().print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except DataError as exc:
        print(f"disttgl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"disttgl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (``disttgl info G | head``): stop quietly, as Unix tools
    do, with SIGPIPE's status. stdout goes to /dev/null so the exit's own flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13
