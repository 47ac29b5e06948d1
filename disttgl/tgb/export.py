"""Any disttgl graph store as a TGB-style folder (spec §4.5c ``--format tgb``), so TGB tooling
(DyGLib_TGB, TGB's loaders) can run on disttgl data:

- ``{name}_edgelist_v{version}.csv``: TGB's wiki layout, a header line then ``src, dst, ts, state
  label, f0..`` per event in the store's order. TGB's reader shifts ``dst <- dst + max(src) + 1``, so
  the file holds ``dst - (max(src) + 1)``: read back (``disttgl convert --format tgb --tgb-name
  tgbl-wiki`` or TGB) the ids are the store's again (for a non-bipartite store the file's dst ids
  may be negative; the shift undoes it exactly).
- ``{name}_val_ns_v{version}.pkl``, ``{name}_test_ns_v{version}.pkl``: hist_rnd negatives
  (:mod:`disttgl.tgb.hist_rnd`) in TGB's pickle format, for TGB's split of these events.

TGB casts timestamps to integers, so a store with fractional times is refused. The folder is
written in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from disttgl.atomic import check_writable_dir
from disttgl.data.graph_store import load_graph
from disttgl.errors import DataError
from disttgl.tgb.hist_rnd import DEFAULT_SEED, hist_rnd
from disttgl.tgb.negatives_file import SPLITS
from disttgl.tgb.pickles import save_tgb_negatives_pickle
from disttgl.tgb.reader import tgb_file_names, tgb_split

log = logging.getLogger(__name__)


def write_tgb_folder(graph_path: str | os.PathLike, out_dir: str | os.PathLike, *, num_neg: int | None = None,
                     seed: int = DEFAULT_SEED, name: str = "tgbl-wiki", version: int = 2) -> Path:
    """Write the store at ``graph_path`` as a TGB folder ``out_dir`` (which must not exist or be
    empty); ``num_neg=None``: every possible destination per positive, as tgbl-wiki v2. Returns it."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "output folder exists and is not empty; remove it or choose another")
    check_writable_dir(out)
    g = load_graph(graph_path)
    if g.num_events == 0:
        raise DataError(graph_path, "the graph holds no events")
    ts = g.t.astype(np.int64)
    if not np.array_equal(ts, g.t):
        i = int(np.flatnonzero(ts != g.t)[0])
        raise DataError(graph_path, f"event {i} has time {g.t[i]!r}: TGB casts timestamps to integers, so only "
                                    "stores with whole-number times can be exported without changing them")
    split = tgb_split(ts)
    if not np.array_equal(split, g.split):
        log.warning("%s: the store's split is not TGB's quantile split of the same times; the folder carries "
                    "TGB's (%s events move)", graph_path, int((split != g.split).sum()))
    if g.label is not None and g.label.ndim != 1:
        raise DataError(graph_path, f"its event labels are multi-label ({g.label.shape[1]} 0/1 columns): TGB's "
                                    "edgelist has one integer label an event, so they cannot be exported")
    negatives = hist_rnd(g.src, g.dst, g.t, split, num_neg=num_neg, seed=seed)
    shift = int(g.src.max()) + 1
    cols = {"src": g.src, "dst": g.dst - shift, "ts": ts,
            "label": g.label.astype(np.int64) if g.label is not None else np.zeros(g.num_events, np.int64)}
    for j in range(g.edge_dim):
        cols[f"f{j}"] = g.edge_feat[:-1, j]
    names = tgb_file_names(name, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        pl.DataFrame(cols).write_csv(tmp / names["edgelist"])
        for s in SPLITS:
            m = split == SPLITS.index(s) + 1
            neg = negatives[s]
            mapping = {(a, b, c): neg.row(r) for r, (a, b, c) in
                       enumerate(zip(g.src[m].tolist(), g.dst[m].tolist(), ts[m].tolist()))}
            save_tgb_negatives_pickle(tmp / names[s], mapping)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %d events as TGB %s v%d, %d val / %d test positives with hist_rnd negatives", out,
             g.num_events, name, version, negatives["val"].rows, negatives["test"].rows)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
