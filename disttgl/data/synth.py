"""The embedded default dataset: a seeded event stream with planted *temporal* structure.

``disttgl synth --out GRAPH.h5`` writes it; :func:`generate` is the pure function behind it. The same
:class:`SynthConfig` always gives the same arrays (seeded ``numpy`` generators, no global state).

Generative process (every step vectorised over all events):

1. **Nodes.** Non-bipartite: ``nodes`` nodes, each both a source and a destination. Bipartite: users
   ``0..U-1`` then items ``U..N-1`` (``U = nodes - round(item_fraction * nodes)``); sources are users,
   destinations items, ``Graph.side`` is 0/1. Each side's nodes are split evenly at random into
   ``communities`` communities. Every source has a log-normal *activity*, every destination a
   log-normal *popularity*.
2. **Times.** Inter-event gaps are exponential with a regime-modulated rate: each run of ~100
   (geometric) events is at random a *burst* (gaps 5x shorter than average) or *calm* (1.8x longer),
   so the mean gap is ``mean_gap`` seconds and gaps are over-dispersed. Times are float64 from 0,
   strictly increasing (gaps of at least 1 ms).
3. **Phases.** The timeline is cut into ``phases`` equal time slices. In phase ``p`` source
   community ``c`` *prefers* destination community ``perm[p][c]`` (a fresh random permutation per
   phase), so who-talks-to-whom drifts: the test split lies in phases the training split never saw.
4. **Sources.** With probability ``burst`` an event copies the source of one of the few events just
   before it (a node acts in bursts); otherwise the source is drawn by activity.
5. **Destinations.** With probability ``repeat`` (when the source has history) the source re-contacts
   the partner of its ``j``-th most recent event as a source, ``j ~ Geometric(recency)`` capped at
   ``window``: repeat interactions with a recency decay. Otherwise a *fresh* destination: with
   probability ``affinity`` in the currently preferred community, else in a uniformly random one,
   then a node of that community by popularity (non-bipartite: never the source itself).
6. **Edge features.** ``(a[c_src] + b[c_dst] + q[phase]) / sqrt(3) + feature_noise * N(0, I)``
   with fixed random Gaussian codes ``a, b, q``: a noisy message that tells the memory which
   community a node is talking to right now. Row ``E`` is the zero "no message yet" sentinel.
7. **Labels** (``events/label``, ``labels`` K > 0; edge classification, docs/design.md §13): an
   event's class is the destination community its source's community prefers in the event's phase,
   modulo K (``perm[phase][c_src] mod K``: one class per community with the default K = 8). It is
   computed from the draws above and draws nothing, so the other arrays (and the store's sha256 for
   the default K) are those of an unlabelled run. The class is temporal: it changes with the phase,
   and the test split's phases were never trained on, so it is read off the source's recent
   partners (memory, neighbours) and the destination, not learnt per node.
   **Multi-label** (``multi_label``, ``--multi-label``; docs/design.md §13.1): a uint8 0/1 matrix
   [E, K] instead, each event holding 1 to 3 labels: the class above, then, for a source whose
   *breadth* is >= 2, the destination's community mod K, and for breadth 3 also (the source's
   community + 1) mod K (labels that coincide count once). A node's breadth (1, 2 or 3, uniform) is
   drawn from its own seeded stream, so the other arrays are those of the single-label run.

What a model can learn from it: a node's recent partners (memory / recent neighbours) predict most
of its next destinations and its current community preference; static popularity and all-of-train
pair frequencies cannot, because preferences drift and repeats track the *recent* past.
Splits are chronological 70/15/15; the T-CSR holds both directions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from disttgl.errors import DataError
from disttgl.data.graph import Graph, build_tcsr, chronological_split
from disttgl.data.graph_store import write_graph

log = logging.getLogger(__name__)

# Bumped whenever the same config would produce different data; part of the recorded hash.
GENERATOR_VERSION = 1

_BURST_GAP, _CALM_GAP = 0.2, 1.8  # gap multipliers of the two regimes (equal shares -> mean 1)
_RUN_LENGTH = 100  # mean events per burst/calm run
_MIN_GAP = 1e-3  # seconds


@dataclass(frozen=True)
class SynthConfig:
    """Generator parameters; the first five are the ``synthetic:`` section of config.yaml."""

    events: int = 20000
    nodes: int = 400
    edge_dim: int = 16
    seed: int = 0
    bipartite: bool = False
    communities: int = 8
    phases: int = 8  # preference regimes over the timeline
    affinity: float = 0.8  # P(fresh destination is in the currently preferred community)
    repeat: float = 0.5  # P(re-contact a recent partner)
    recency: float = 0.5  # geometric decay over the source's previous events when repeating
    window: int = 10  # a repeat reaches at most this many of the source's events back
    burst: float = 0.3  # P(an event copies the source of a just-preceding event)
    item_fraction: float = 0.2  # bipartite: share of nodes on the item side
    mean_gap: float = 60.0  # seconds between consecutive events on average
    feature_noise: float = 1.0  # std of the Gaussian noise added to the edge feature code
    labels: int = 8  # K classes of events/label (the preferred community mod K); 0: no labels
    multi_label: bool = False  # events/label as a 0/1 matrix [E, K] of 1..3 labels per event (step 7)

    def __post_init__(self) -> None:
        def bad(key: str, need: str) -> DataError:
            flag = f" (--{key.replace('_', '-')})" if key in _CLI_KEYS else ""
            return DataError(None, f"synthetic: {key}{flag} must be {need}, got {getattr(self, key)!r}")

        for key, low in (("events", 1), ("nodes", 2), ("edge_dim", 0), ("seed", 0),
                         ("communities", 1), ("phases", 1), ("window", 1), ("labels", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise bad(key, f"an integer >= {low}")
        if self.labels == 1:
            raise bad("labels", "0 (no labels) or a number of classes >= 2")
        for key in ("bipartite", "multi_label"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise bad(key, "true or false")
        if self.multi_label and self.labels == 0:
            raise bad("labels", "a number of classes >= 2 with multi_label (--multi-label)")
        for key in ("affinity", "repeat", "burst", "feature_noise"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 <= value <= (1 if key != "feature_noise" else np.inf):
                raise bad(key, "a number in [0, 1]" if key != "feature_noise" else "a number >= 0")
        if not isinstance(self.recency, (int, float)) or not 0 < self.recency <= 1:
            raise bad("recency", "a number in (0, 1]")
        if not isinstance(self.item_fraction, (int, float)) or not 0 < self.item_fraction < 1:
            raise bad("item_fraction", "a number in (0, 1)")
        if not isinstance(self.mean_gap, (int, float)) or not 0 < self.mean_gap < np.inf:
            raise bad("mean_gap", "a positive number")

    def sha256(self) -> str:
        """Stable hash of the parameters (and generator version): the dataset's provenance checksum."""
        params = asdict(self)
        if params["labels"] == SynthConfig.labels:  # labels draw nothing: the default keeps the unlabelled hash
            del params["labels"]
        if not params["multi_label"]:  # as before the setting existed
            del params["multi_label"]
        payload = json.dumps({"generator_version": GENERATOR_VERSION, **params}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


_CLI_KEYS = ("events", "nodes", "edge_dim", "seed", "bipartite", "labels", "multi_label")


@dataclass(frozen=True)
class Planted:
    """The hidden structure behind the events (ground truth for tests and analysis)."""

    num_sources: int  # sources are nodes [0, num_sources); all nodes when not bipartite
    dst_offset: int  # destinations are nodes [dst_offset, num_nodes)
    community: np.ndarray  # int64 [N]: community within the node's side
    num_communities: int
    activity: np.ndarray  # float64 [N]: source sampling weight (0 off the source side)
    popularity: np.ndarray  # float64 [N]: destination sampling weight (0 off the destination side)
    preference: np.ndarray  # int64 [phases, C]: preferred destination community per phase


def plant(cfg: SynthConfig) -> Planted:
    """Draw the node-level structure; depends on the seed but not on the number of events."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    n = cfg.nodes
    if cfg.bipartite:
        num_items = min(n - 1, max(1, round(cfg.item_fraction * n)))
        num_src, dst_off = n - num_items, n - num_items
    else:
        num_src, dst_off = n, 0
    num_comm = min(cfg.communities, num_src, n - dst_off)
    community = np.empty(n, dtype=np.int64)
    # Balanced, random membership: every community is non-empty.
    if cfg.bipartite:
        community[:num_src] = rng.permutation(num_src) % num_comm
        community[dst_off:] = rng.permutation(n - dst_off) % num_comm
    else:
        community[:] = rng.permutation(n) % num_comm
    activity = np.zeros(n)
    popularity = np.zeros(n)
    activity[:num_src] = rng.lognormal(0.0, 1.0, num_src)
    popularity[dst_off:] = rng.lognormal(0.0, 1.0, n - dst_off)
    preference = np.stack([rng.permutation(num_comm) for _ in range(cfg.phases)])
    return Planted(num_src, dst_off, community, num_comm, activity, popularity, preference)


def _resolve(pointer: np.ndarray) -> np.ndarray:
    """Follow ``pointer`` (each entry <= its index; roots point at themselves) to the roots.

    Pointer jumping: O(log chain length) vectorised passes instead of a sequential loop.
    """
    root = pointer.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _times(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    e = cfg.events
    runs = rng.geometric(1.0 / _RUN_LENGTH, size=max(1, 2 * e // _RUN_LENGTH + 8))
    while runs.sum() < e:  # rare: top up until the runs cover every event
        runs = np.concatenate([runs, rng.geometric(1.0 / _RUN_LENGTH, size=len(runs))])
    regime = rng.random(len(runs)) < 0.5
    scale = np.repeat(np.where(regime, _BURST_GAP, _CALM_GAP), runs)[:e]
    gaps = np.maximum(rng.exponential(cfg.mean_gap, e) * scale, _MIN_GAP)  # no float ties
    gaps[0] = 0.0
    return np.cumsum(gaps)


def _sample_in_community(planted: Planted, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One destination per entry of ``target`` (a community), drawn by popularity within it."""
    dst_nodes = np.arange(planted.dst_offset, len(planted.community))
    comm = planted.community[dst_nodes]
    order = np.lexsort((dst_nodes, comm))
    members, comm = dst_nodes[order], comm[order]
    weight = planted.popularity[members]
    # Segment c of `key` rises within (c, c + 1]: c + the within-community CDF.
    starts = np.searchsorted(comm, np.arange(planted.num_communities))
    cum = np.cumsum(weight)
    seg_total = np.add.reduceat(weight, starts)
    before = np.concatenate([[0.0], np.cumsum(seg_total)[:-1]])
    key = comm + (cum - before[comm]) / seg_total[comm]
    ends = np.append(starts[1:], len(members)) - 1
    key[ends] = np.arange(planted.num_communities) + 1.0  # exact segment ends despite rounding
    idx = np.searchsorted(key, target + rng.random(len(target)), side="right")
    return members[np.minimum(idx, ends[target])]


def _features(cfg: SynthConfig, planted: Planted, src: np.ndarray, dst: np.ndarray, phase: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    d, c = cfg.edge_dim, planted.num_communities
    codes = [rng.standard_normal((k, d), dtype=np.float32) for k in (c, c, cfg.phases)]
    # float32 and in place: this is the bulk of the work at 1M events. Rows are filled 256k at a time,
    # so no (E, d) temporary exists beside the result; the noise draws are those of one (E, d) draw.
    feat = np.zeros((len(src) + 1, d), dtype=np.float32)
    for a in range(0, len(src), 1 << 18):
        rows = slice(a, min(a + (1 << 18), len(src)))
        body = feat[rows]
        np.take(codes[0], planted.community[src[rows]], axis=0, out=body)
        body += codes[1][planted.community[dst[rows]]]
        body += codes[2][phase[rows]]
        body *= np.float32(1.0 / np.sqrt(3.0))
        noise = rng.standard_normal(body.shape, dtype=np.float32)
        noise *= np.float32(cfg.feature_noise)
        body += noise
    return feat


def generate(cfg: SynthConfig = SynthConfig()) -> Graph:
    """Generate the synthetic graph described in the module docstring (pure and deterministic)."""
    planted = plant(cfg)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    e, n = cfg.events, cfg.nodes
    idx = np.arange(e)

    t = _times(cfg, rng)
    phase = np.minimum((cfg.phases * t / t[-1]).astype(np.int64), cfg.phases - 1) if t[-1] > 0 \
        else np.zeros(e, dtype=np.int64)

    # Sources: fresh by activity, or copy a just-preceding event's source (bursts).
    act = planted.activity[:planted.num_sources]
    fresh_src = rng.choice(planted.num_sources, size=e, p=act / act.sum())
    back = rng.geometric(1.0 / 3.0, e)
    copy = (rng.random(e) < cfg.burst) & (back <= idx)
    src = fresh_src[_resolve(np.where(copy, idx - back, idx))]
    del fresh_src, back, copy  # each temporary goes at its last use: a 20M stream holds 160 MB each

    # Fresh destinations: preferred community of the source's community in this phase, or random.
    pref = planted.preference[phase, planted.community[src]]
    target = np.where(rng.random(e) < cfg.affinity, pref, rng.integers(planted.num_communities, size=e))
    fresh_dst = _sample_in_community(planted, target, rng)
    del pref, target
    if not cfg.bipartite:
        loop = fresh_dst == src
        fresh_dst[loop] = (src[loop] + 1 + rng.integers(n - 1, size=int(loop.sum()))) % n

    # Repeats: the partner of the source's j-th previous event (as a source), j ~ Geometric(recency).
    by_src = np.argsort(src, kind="stable")
    first = np.searchsorted(src[by_src], src[by_src])  # position of each source's first event
    occ = np.empty(e, dtype=np.int64)
    occ[by_src] = np.arange(e) - first  # how many earlier events share this source
    del first
    j = np.minimum(np.minimum(rng.geometric(cfg.recency, e), cfg.window), occ)
    del occ
    rep = (rng.random(e) < cfg.repeat) & (j > 0)
    pos = np.empty(e, dtype=np.int64)
    pos[by_src] = np.arange(e)
    prev = by_src[np.maximum(pos - j, 0)]
    dst = fresh_dst[_resolve(np.where(rep, prev, idx))]
    del fresh_dst, by_src, j, rep, pos, prev, idx
    src, dst = src.astype(np.int64, copy=False), dst.astype(np.int64, copy=False)
    tcsr = build_tcsr(src, dst, t, n)  # before the features: the sort's temporaries never meet them
    edge_feat = _features(cfg, planted, src, dst, phase, rng)
    # computed from the draws above, drawing nothing: the other arrays do not depend on `labels`
    label = planted.preference[phase, planted.community[src]] % cfg.labels if cfg.labels else None
    if label is not None and cfg.multi_label:
        label = multi_labels(cfg, planted, src, dst, label)
    side = None
    if cfg.bipartite:
        side = (np.arange(n) >= planted.dst_offset).astype(np.int8)
    attrs = {"source": "synthetic", "sha256": cfg.sha256(), "sorted_on_input": True,
             "split_rule": "chronological", "directed": False, "generator_version": GENERATOR_VERSION,
             "synth_config": asdict(cfg)}
    return Graph(src=src, dst=dst, t=t, split=chronological_split(t), num_nodes=n,
                 bipartite=cfg.bipartite, edge_feat=edge_feat, tcsr=tcsr,
                 label=None if label is None else label if cfg.multi_label else label.astype(np.int64),
                 original_id=np.arange(n, dtype=np.int64), side=side, attrs=attrs)


def multi_labels(cfg: SynthConfig, planted: Planted, src: np.ndarray, dst: np.ndarray,
                 first: np.ndarray) -> np.ndarray:
    """The multi-label matrix uint8 [E, K] of step 7: ``first`` (the single-label class) for every
    event, the destination's community for sources of breadth >= 2, the source's next one for 3."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 3]))  # its own stream: nothing else moves
    breadth = rng.integers(1, 4, len(planted.community))[src]
    out = np.zeros((len(src), cfg.labels), np.uint8)
    rows = np.arange(len(src))
    out[rows, first] = 1
    wide = breadth >= 2
    out[rows[wide], planted.community[dst[wide]] % cfg.labels] = 1
    wide = breadth >= 3
    out[rows[wide], (planted.community[src[wide]] + 1) % cfg.labels] = 1
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="output graph store (.h5)")
    parser.add_argument("--events", type=int, default=d.events, help=f"number of events (default {d.events})")
    parser.add_argument("--nodes", type=int, default=d.nodes, help=f"number of nodes (default {d.nodes})")
    parser.add_argument("--edge-dim", type=int, default=d.edge_dim,
                        help=f"edge feature dimension (default {d.edge_dim})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--bipartite", action="store_true",
                        help="user -> item variant (users first, items after them)")
    parser.add_argument("--communities", type=int, default=d.communities,
                        help=f"communities per side (default {d.communities})")
    parser.add_argument("--phases", type=int, default=d.phases,
                        help=f"preference regimes over the timeline (default {d.phases})")
    parser.add_argument("--labels", type=int, default=d.labels,
                        help=f"classes of the event labels for --task edge-class: the community the source's "
                             f"community prefers in the event's phase, mod K (default {d.labels}; 0: no labels)")
    parser.add_argument("--multi-label", action="store_true",
                        help="multi-label event labels: a 0/1 row over the --labels classes per event, 1 to 3 "
                             "labels each (the class above, the destination's community, the source's next)")


def run(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(SynthConfig) if hasattr(args, f.name)}
    cfg = SynthConfig(**given)  # validates before any output exists
    start = time.perf_counter()
    graph = generate(cfg)
    write_graph(graph, args.out)
    log.info("wrote %s: %d events, %d nodes, edge_dim %d, bipartite=%s (%.2fs)", args.out,
             graph.num_events, graph.num_nodes, graph.edge_dim, graph.bipartite,
             time.perf_counter() - start)
    return 0
