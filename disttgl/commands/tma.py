"""``disttgl tma PARTS_DIR --out RUN``: RandomTMA / SuperTMA training on a partition from
``disttgl partition`` (docs/design.md §14): a Lighthouse, one trainer process per part, weights
averaged over the live trainers every ``--sync-every``, the averaged model evaluated on the whole
graph. Model and training flags are ``disttgl train``'s (same dataclass defaults).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, fields
from pathlib import Path

from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams
from disttgl.cache.reader import open_cache
from disttgl.commands.train import _COMMON_HELP, _TRAIN_HELP, _add_fields, config_from_args
from disttgl.data.graph_store import read_attrs
from disttgl.errors import DataError
from disttgl.tma.coordinator import TMAOptions, run_tma
from disttgl.tma.launcher import LAUNCHERS, resolve_launcher
from disttgl.tma.part_store import read_partition
from disttgl.tma.plan import TMAPlan, Timeouts, parse_duration, parse_sync_every
from disttgl.train.config import TrainConfig, resolve_lr
from disttgl.workflow_config import CACHE_NAME

log = logging.getLogger(__name__)

# `disttgl train`'s model/training flags that mean the same for a TMA trainer (not --epochs: a TMA
# run is bounded by time or rounds)
_MODEL_HELP = {k: v for k, v in _COMMON_HELP.items() if k != "epochs"}
_MODEL_TRAIN_HELP = {k: _TRAIN_HELP[k] for k in ("mailbox_size", "static", "static_dropout")}
_TIMEOUT_HELP = {
    "heartbeat": "seconds without a heartbeat before the Lighthouse counts a trainer dead (the others' stall)",
    "join": "seconds the Lighthouse waits for healthy trainers late for a round (default: 5 with a time "
            "period, the quorum timeout with a step period)",
    "quorum": "seconds a trainer waits for a round to form (default: 2 periods + 2 join timeouts, or 600)",
    "collective": "seconds the averaging allreduce and a late joiner's weight transfer may take",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", metavar="PARTS_DIR", help="partition directory from `disttgl partition`")
    parser.add_argument("--out", required=True, help="run directory (rounds.jsonl, metrics.jsonl, summary.json)")
    parser.add_argument("--sync-every", default="60s",
                        help="average every period of wall clock (60s, 2min: the paper's) or every N steps of "
                             "each trainer (200steps: deterministic)")
    parser.add_argument("--time-limit", default="30min", help="training time after the common start (90s, 30min, 2h)")
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (0: at the time limit)")
    parser.add_argument("--drop-parts", default="", help="comma-separated parts that get no trainer (the paper's "
                                                         "failure mimic: a partition never trained)")
    parser.add_argument("--restart-dead", action="store_true",
                        help="start a dead trainer again; it rejoins at the next round with the last average")
    parser.add_argument("--max-restarts", type=int, default=3, help="--restart-dead: restarts per trainer")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                        help="local: trainers are child processes here; srun: one SLURM job step per trainer in "
                             "this allocation (a dead trainer's step ends alone); auto: srun inside a SLURM job")
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate every N-th round (and the last)")
    parser.add_argument("--graph", default=None, help="the whole graph (default: the one partition.json names)")
    parser.add_argument("--eval-cache", default=None,
                        help="the whole graph's batch cache (default: built in PARTS_DIR if missing)")
    d = BatchParams()
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="batches of the caches built here")
    parser.add_argument("--neg-sets", type=int, default=d.neg_sets, help="train negative sets of the caches built here")
    for name, text in _TIMEOUT_HELP.items():
        default = getattr(Timeouts(), name)
        parser.add_argument(f"--{name}-timeout", type=float, default=default,
                            help=text + ("" if default is None else f" (default: {default})"))
    _add_fields(parser, TrainConfig, _MODEL_HELP)
    _add_fields(parser, TrainConfig, _MODEL_TRAIN_HELP)
    parser.add_argument("--loss", choices=("ce", "bce"), default=None, help=f"default: {TrainConfig.loss}")
    parser.add_argument("--preset", choices=("disttgl",), default=None, help="disttgl: lr 1e-4, loss ce")
    parser.add_argument("--no-progress", action="store_true", help="(trainers never show a progress bar)")


def _parts(text: str, parts: int) -> list[int]:
    try:
        drop = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise DataError(None, f"--drop-parts must be part numbers separated by commas, got {text!r}") from None
    if any(not 0 <= p < parts for p in drop):
        raise DataError(None, f"--drop-parts: parts are 0..{parts - 1}, got {text!r}")
    trainers = [p for p in range(parts) if p not in drop]
    if not trainers:
        raise DataError(None, f"--drop-parts {text} leaves no part to train")
    return trainers


def ensure_cache(graph: str, path: Path, params: BatchParams) -> str:
    """``path``, built from ``graph`` first when it does not exist yet (atomically)."""
    if not path.exists():
        log.info("building %s", path)
        build_cache(graph, path, params, progress=False)
    return str(path)


def run(args: argparse.Namespace) -> int:
    kind, value = parse_sync_every(args.sync_every)
    limit = parse_duration(args.time_limit)
    parts_dir = Path(args.parts).resolve()
    info = read_partition(parts_dir)
    graph = args.graph or info.graph
    if str(read_attrs(graph).get("sha256", "")) != info.graph_sha256:
        raise DataError(graph, "is not the graph this partition was made from (its sha256 differs)")
    trainers = _parts(args.drop_parts, info.parts)
    launcher = resolve_launcher(args.launcher, args.threads or 1)  # before any cache is built
    if args.eval_every < 1 or args.max_restarts < 0:
        raise DataError(None, "--eval-every must be >= 1 and --max-restarts >= 0")
    params = BatchParams(batch_size=args.batch_size, neg_sets=args.neg_sets)
    name = CACHE_NAME.format(i=1, **{**asdict(params), "tgl_compat": int(params.tgl_compat)}) + ".h5"
    eval_cache = args.eval_cache or ensure_cache(graph, parts_dir / f"whole-{name}", params)
    stores = [str(parts_dir / s) for s in info.stores]
    caches = [ensure_cache(stores[p], Path(stores[p]).parent / name, params) if p in trainers else ""
              for p in range(info.parts)]
    args.graph, args.cache, args.out = graph, eval_cache, str(Path(args.out).resolve())
    # epochs do not bound a TMA run; one thread per trainer unless told (they share the machine)
    args.epochs, args.threads, args.no_progress = TrainConfig.epochs, args.threads or 1, True
    cfg = config_from_args(args, TrainConfig, **{k: getattr(args, k) for k in _MODEL_TRAIN_HELP})
    with open_cache(eval_cache, graph_path=graph) as cache:
        lr = resolve_lr(cfg, cache.num_batches("train"))  # the whole graph's: every trainer the same
    cfg.lr = lr
    cfg.check()
    train = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("graph", "cache", "out")}
    timeouts = Timeouts(heartbeat=args.heartbeat_timeout, join=args.join_timeout, quorum=args.quorum_timeout,
                        collective=args.collective_timeout).resolved(kind, value)
    plan = TMAPlan(run_dir=args.out, parts_dir=str(parts_dir), parts=info.parts, trainers=trainers, stores=stores,
                   caches=caches, train=train, sync_kind=kind, sync_value=value, time_limit=limit,
                   max_rounds=args.rounds, timeouts=timeouts)
    plan.check()
    record = {**asdict(cfg), "method": info.method, "rule": info.rule, "parts": info.parts, "clusters": info.clusters,
              "partition_seed": info.seed, "assignment_sha256": info.assignment_sha256, "trainers": trainers,
              "sync_every": args.sync_every, "time_limit_s": limit, "max_rounds": args.rounds,
              "eval_every": args.eval_every, "restart_dead": args.restart_dead, "timeouts": asdict(timeouts),
              "train_events_kept": info.coverage.get("train_events_kept"),
              "node_share_median": info.coverage.get("node_share_median")}
    record["launcher"] = launcher.kind
    opts = TMAOptions(eval_every=args.eval_every, restart_dead=args.restart_dead, max_restarts=args.max_restarts,
                      launcher=launcher)
    summary = run_tma(plan, cfg, opts, record)
    log.info("%s-%s on %d trainers: %d rounds in %.0f s, best round %d: val MRR %.4f, test MRR %.4f%s", info.method,
             info.rule, len(trainers), summary["rounds"], summary["wall_seconds"], summary["best_round"],
             summary["val_mrr"], summary["test_mrr"],
             f" (degraded: trainer(s) {summary['dead_trainers']} died)" if summary["degraded"] else "")
    return 0
