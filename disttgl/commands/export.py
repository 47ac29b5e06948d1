"""``disttgl export GRAPH --format pyg|tgb --out PATH``: the graph store in another system's format.

- ``pyg``: one ``.pt`` file holding a dict of tensors that ``torch_geometric.data.TemporalData(**d)``
  rebuilds (src, dst, t, msg, y, the train/val/test masks, x, original_id; the layout and the choice
  of ids are :mod:`disttgl.data.pyg`'s docstring). Written atomically; loads with
  ``torch.load(..., weights_only=True)``; ``disttgl convert data.pt --format pyg`` reads it back.
- ``tgb``: a TGB-style folder (edge list CSV plus val/test negatives), so TGB tooling runs on any
  disttgl graph (:func:`disttgl.tgb.export.write_tgb_folder`).

It sits with the commands because it reaches into two rooms (``data`` and ``tgb``).
"""

from __future__ import annotations

import argparse
import logging

from disttgl.errors import DataError

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("pyg", "tgb")
DEFAULT_TGB_SEED = 42


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="graph store (graph.h5)")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt",
                        help="pyg: a .pt file for torch_geometric's TemporalData; tgb: a TGB-style folder")
    parser.add_argument("--out", required=True, help="output file (pyg: data.pt) or folder (tgb)")
    parser.add_argument("--num-neg", type=int, default=None,
                        help="tgb only: negatives per val/test event (default: the TGB exporter's)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"tgb only: seed of the negative sampler (default: {DEFAULT_TGB_SEED}, TGB's)")


def run(args: argparse.Namespace) -> int:
    if args.fmt == "pyg":
        given = [flag for flag, value in (("--num-neg", args.num_neg), ("--seed", args.seed)) if value is not None]
        if given:
            raise DataError(None, f"{', '.join(given)} apply to --format tgb only (the pyg export has no negatives)")
        from disttgl.data.graph_store import load_graph
        from disttgl.data.pyg import write_pyg

        graph = load_graph(args.graph)
        tensors = write_pyg(graph, args.out)
        log.info("wrote %s: %d events, %d nodes, keys %s (TemporalData(**torch.load(path, weights_only=True)))",
                 args.out, graph.num_events, graph.num_nodes, ", ".join(tensors))
        return 0
    if args.num_neg is not None and args.num_neg < 1:
        raise DataError(None, f"--num-neg must be at least 1, got {args.num_neg}")
    # written by the TGB work; imported here so the pyg export never needs it
    from disttgl.tgb.export import write_tgb_folder

    seed = DEFAULT_TGB_SEED if args.seed is None else args.seed
    write_tgb_folder(args.graph, args.out, num_neg=args.num_neg, seed=seed)
    log.info("wrote the TGB folder %s", args.out)
    return 0
