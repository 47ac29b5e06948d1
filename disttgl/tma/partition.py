"""RandomTMA / SuperTMA partitions of a temporal graph's nodes, and which events each part keeps
(pure numpy; METIS through the optional ``pymetis``). docs/design.md §14.1.

- RandomTMA: every node draws its part uniformly at random (seeded), as the authors' code does
  (there with float16 draws, here exact integers).
- SuperTMA: METIS cuts the static projection of the **train split only** (undirected, one edge
  per pair, weight = number of train events between the pair) into C mini-clusters
  (super-nodes); the clusters are shuffled and dealt to the parts in near-equal groups by the
  authors' rule (:func:`group_clusters`).
- Event rules: ``induced`` (the paper's: both endpoints in the part) and ``incident`` (an endpoint
  in the part; the other endpoint is a ghost whose memory stays on that trainer).
"""

from __future__ import annotations

import hashlib

import numpy as np

from disttgl.errors import DataError

METHODS = ("random", "super")
RULES = ("induced", "incident")
# default C: about NODES_PER_CLUSTER nodes per super-node, the scale of the authors' ogbl-citation2
# runs (2.93 M nodes in 15000 clusters: 195 each), at least MIN_CLUSTERS_PER_PART clusters per part
# (so the dealing is random at all) and at most the authors' 15000
NODES_PER_CLUSTER, MIN_CLUSTERS_PER_PART, MAX_CLUSTERS = 200, 4, 15000


def default_clusters(num_nodes: int, parts: int) -> int:
    """SuperTMA's default number of clusters C for ``num_nodes`` nodes and ``parts`` trainers.

    Args:
        num_nodes: nodes of the graph.
        parts: trainers (parts).
    """
    c = max(MIN_CLUSTERS_PER_PART * parts, round(num_nodes / NODES_PER_CLUSTER))
    return int(min(c, MAX_CLUSTERS, num_nodes))


def random_nodes(num_nodes: int, parts: int, seed: int) -> np.ndarray:
    """RandomTMA: each node's part, drawn uniformly and independently (int64 [num_nodes]).

    Args:
        num_nodes: nodes to assign.
        parts: number of parts P.
        seed: seed of the draw.
    """
    return np.random.default_rng(seed).integers(0, parts, size=num_nodes, dtype=np.int64)


def group_clusters(num_clusters: int, parts: int, seed: int) -> list[np.ndarray]:
    """The clusters of each part, by the authors' rule: shuffle the cluster ids with a seeded
    generator, then cut them into ``parts`` consecutive groups of floor(C/P) clusters, one more
    where a uniform draw falls below the fractional part of C/P; the last group takes the rest
    (it may be empty when the earlier groups took every cluster).

    Args:
        num_clusters: C, the number of super-nodes.
        parts: P, the number of groups.
        seed: seed of ``numpy.random.default_rng``.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_clusters)
    share = num_clusters / parts
    sizes = np.array([int(share) + (rng.random() < share % 1) for _ in range(parts)], dtype=np.int64)
    ends = np.minimum(np.cumsum(sizes), num_clusters)
    ends[-1] = num_clusters
    starts = np.minimum(np.concatenate([[0], ends[:-1]]), num_clusters)
    return [order[s:max(s, e)] for s, e in zip(starts, ends)]


def train_projection(src: np.ndarray, dst: np.ndarray, split: np.ndarray,
                     num_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train split as a static undirected graph in CSR form (METIS's xadj, adjncy, eweights):
    one edge per node pair, weighted by its number of train events; self loops are dropped.

    Args:
        src, dst: event endpoints.
        split: event splits (0 = train).
        num_nodes: nodes of the graph.
    """
    train = split == 0
    u, v = src[train].astype(np.int64), dst[train].astype(np.int64)
    keep = u != v
    lo, hi = np.minimum(u[keep], v[keep]), np.maximum(u[keep], v[keep])
    pairs, weight = np.unique(lo * num_nodes + hi, return_counts=True)
    a, b = np.divmod(pairs, num_nodes)
    rows, cols, w = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([weight, weight])
    order = np.lexsort((cols, rows))
    xadj = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_nodes), out=xadj[1:])
    return xadj, cols[order], w[order]


def metis_clusters(xadj: np.ndarray, adjncy: np.ndarray, eweights: np.ndarray, clusters: int,
                   seed: int) -> np.ndarray:
    """METIS k-way clusters of a CSR graph (int64 [N]); needs ``pymetis`` (``pip install disttgl[tma]``).

    Args:
        xadj, adjncy, eweights: the graph (:func:`train_projection`).
        clusters: C, the number of clusters.
        seed: METIS's seed.
    """
    try:
        import pymetis  # an optional dependency (extra [tma]): only SuperTMA needs it
    except ImportError:
        raise DataError(None, "--method super needs METIS via pymetis: pip install 'disttgl[tma]'") from None
    if clusters == 1:
        return np.zeros(len(xadj) - 1, dtype=np.int64)
    graph = pymetis.CSRAdjacency(adj_starts=xadj, adjacent=adjncy)
    _, membership = pymetis.part_graph(clusters, graph, eweights=eweights, options=pymetis.Options(seed=int(seed)))
    return np.asarray(membership, dtype=np.int64)


def super_nodes(src: np.ndarray, dst: np.ndarray, split: np.ndarray, num_nodes: int, parts: int,
                clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SuperTMA: (each node's part, each node's cluster), both int64 [num_nodes].

    Args:
        src, dst, split: the events (only the train split shapes the clusters).
        num_nodes: nodes of the graph.
        parts: P.
        clusters: C (METIS clusters, shuffled and dealt by :func:`group_clusters`).
        seed: seed of METIS and of the dealing.
    """
    cluster = metis_clusters(*train_projection(src, dst, split, num_nodes), clusters, seed)
    part_of_cluster = np.empty(clusters, dtype=np.int64)
    for p, group in enumerate(group_clusters(clusters, parts, seed)):
        part_of_cluster[group] = p
    return part_of_cluster[cluster], cluster


def event_mask(src: np.ndarray, dst: np.ndarray, assignment: np.ndarray, part: int, rule: str) -> np.ndarray:
    """Which events part ``part`` keeps (bool [E]) under ``rule``: ``induced`` both endpoints in the
    part, ``incident`` at least one.

    Args:
        src, dst: event endpoints.
        assignment: each node's part.
        part: the part.
        rule: ``induced`` or ``incident``.
    """
    a, b = assignment[src] == part, assignment[dst] == part
    if rule == "induced":
        return a & b
    if rule == "incident":
        return a | b
    raise DataError(None, f"--rule must be one of {', '.join(RULES)}, got {rule!r}")


def assignment_sha256(assignment: np.ndarray) -> str:
    """The checksum partition.json records: SHA-256 of the parts as little-endian int64."""
    return hashlib.sha256(np.ascontiguousarray(assignment, dtype="<i8").tobytes()).hexdigest()


def coverage(src: np.ndarray, dst: np.ndarray, split: np.ndarray, assignment: np.ndarray, parts: int,
             rule: str) -> dict:
    """What each part keeps and how much of a node's history its own trainer sees.

    Returns ``parts`` (per part: nodes assigned, events kept per split, share of the split kept,
    active nodes = assigned nodes with a kept train event, ghost nodes = other nodes in its
    events) and overall: ``train_events_kept`` (share of train events kept by some part),
    ``train_event_copies`` (kept train events summed over parts, over train events) and the
    median / mean over nodes with a train event of the share of its train events its own part keeps.

    Args:
        src, dst, split: the events.
        assignment: each node's part.
        parts: P.
        rule: ``induced`` or ``incident``.
    """
    n = len(assignment)
    totals = np.bincount(split, minlength=3)
    names = ("train", "val", "test")
    any_kept = np.zeros(len(src), dtype=bool)
    copies = 0
    rows = []
    for p in range(parts):
        mask = event_mask(src, dst, assignment, p, rule)
        any_kept |= mask
        kept = np.bincount(split[mask], minlength=3)
        copies += int(kept[0])
        train_nodes = np.unique(np.concatenate([src[mask & (split == 0)], dst[mask & (split == 0)]]))
        seen = np.unique(np.concatenate([src[mask], dst[mask]]))
        own = assignment[seen] == p
        rows.append({"part": p, "nodes": int((assignment == p).sum()),
                     "events": {s: int(kept[i]) for i, s in enumerate(names)},
                     "kept_share": {s: float(kept[i] / totals[i]) if totals[i] else 0.0 for i, s in enumerate(names)},
                     "active_nodes": int((assignment[train_nodes] == p).sum()), "ghost_nodes": int((~own).sum())})
    # a node's own trainer keeps the event iff the event is in the node's own part
    train = split == 0
    u, v = src[train], dst[train]
    inc = np.bincount(u, minlength=n) + np.bincount(v, minlength=n)
    same = assignment[u] == assignment[v]
    kept_for_end = np.ones(len(u), dtype=bool) if rule == "incident" else same
    own = np.bincount(u, weights=kept_for_end, minlength=n) + np.bincount(v, weights=kept_for_end, minlength=n)
    has = inc > 0
    share = own[has] / inc[has]
    n_train = int(totals[0])
    return {"parts": rows,
            "train_events_kept": float(any_kept[train].sum() / n_train) if n_train else 0.0,
            "train_event_copies": float(copies / n_train) if n_train else 0.0,
            "node_share_median": float(np.median(share)) if len(share) else 0.0,
            "node_share_mean": float(share.mean()) if len(share) else 0.0,
            "nodes_with_train_events": int(has.sum())}
