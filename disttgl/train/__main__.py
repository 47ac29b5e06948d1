"""``python -m disttgl.train``: the ``disttgl train`` command, also the one distributed entry
(``torchrun --nproc-per-node W -m disttgl.train GRAPH CACHE --out DIR --parallelism IxJxK``)."""

import sys

from disttgl.cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
