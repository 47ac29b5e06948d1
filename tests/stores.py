"""The small synthetic graph store and batch cache most test modules train on, and the CLI in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate


def synthetic_store(directory: Path, synth: SynthConfig, params: BatchParams, *, graph: str = "graph.h5",
                    cache: str = "batches.h5") -> tuple[Path, Path]:
    """Write ``synth``'s stream to ``directory/graph`` and its batches to ``directory/cache``.

    Args:
        directory: where both files go.
        synth: the synthetic stream.
        params: the batch cache's parameters.
        graph: the graph store's file name.
        cache: the batch cache's file name.
    Returns: (graph store path, batch cache path).
    """
    graph_path, cache_path = Path(directory) / graph, Path(directory) / cache
    write_graph(generate(synth), graph_path)
    build_cache(graph_path, cache_path, params, progress=False)
    return graph_path, cache_path


def sh(*args: str, cwd: Path) -> None:
    """``python -m disttgl ARGS`` in ``cwd``, which must succeed (its output captured)."""
    subprocess.run([sys.executable, "-m", "disttgl", *args], cwd=cwd, check=True, capture_output=True)


def pipeline_store(directory: Path) -> tuple[Path, Path]:
    """The store MSPipe's executor tests train on (off, threads and streams alike): 3,000 events over
    120 nodes, batches of 50 with 2 negative sets. Returns (graph store path, batch cache path)."""
    return synthetic_store(directory, SynthConfig(events=3000, nodes=120, edge_dim=4, seed=1),
                           BatchParams(batch_size=50, neg_sets=2, eval_negatives=9, seed=0))
