"""``disttgl info``: what a graph store holds."""

from __future__ import annotations

import argparse
import json

from disttgl.data.graph_store import graph_info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="graph store (.h5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def format_info(info: dict) -> str:
    s = info["splits"]
    lines = [
        f"events        {info['num_events']:,}",
        f"nodes         {info['num_nodes']:,}",
        f"edge_dim      {info['edge_dim']}",
        f"node_dim      {info['node_dim']}",
        f"bipartite     {info['bipartite']}",
        f"directed      {info['directed']}",
        f"splits        train {s['train']:,} / val {s['val']:,} / test {s['test']:,} ({info['split_rule']})",
        f"time range    {info['t_min']} .. {info['t_max']}",
        f"sorted input  {'yes' if info['sorted_on_input'] else 'no (sorted stably by time on conversion)'}",
        f"labels        {'yes' if info['has_label'] else 'no'}",
        f"source        {info['source']}",
        f"sha256        {info['sha256']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = graph_info(args.graph)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
