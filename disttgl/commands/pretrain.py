"""``disttgl pretrain GRAPH CACHE --out STATIC.h5``: learn the static node memory.

The TGN with its GRU memory replaced by a learnable per-node table (no mailbox) is trained on the
same task and batches; the table of the best epoch by validation MRR (early stopping) is saved as
``static_memory`` [N, d] float32 in an HDF5 file, which ``disttgl train --static`` loads frozen.
The file records the graph's ``sha256`` and the table's own (``table_sha256``); training refuses a
table of another graph, one whose bytes changed, one with NaN/inf rows and one without the checksum
(written by an older disttgl: pretrain again). Defaults: :class:`~disttgl.train.config.PretrainConfig`.
"""

from __future__ import annotations

import argparse

from disttgl.commands.train import add_common_arguments, pretrain_config
from disttgl.train.config import PretrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, PretrainConfig)  # --epochs: a ceiling; early stopping (--patience) ends it
    parser.add_argument("--out", required=True, help="output static memory file (.h5)")
    parser.add_argument("--patience", type=int, default=PretrainConfig.patience,
                        help="epochs without validation MRR gain before stopping")


def run(args: argparse.Namespace) -> int:
    from disttgl.train.pretrain import pretrain

    pretrain(pretrain_config(args))
    return 0
