"""Checks and argument builders the Snakemake rules call, kept here so the rules stay thin and the
logic is unit-tested. The JSON schema checks types; this checks what a schema cannot."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import socket
from pathlib import Path
from typing import Any

from disttgl.cache.format import BatchParams
from disttgl.errors import DataError
from disttgl.lifetime import pid_alive, proc_stat

# A dataset or run name becomes a directory under data_dir/results_dir: no "." or "..", nor a hidden
# name (the schema's pattern alone lets both through, and "{dataset}" = ".." escapes data_dir).
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def check_config(config: dict[str, Any]) -> None:
    """Every dataset named must be known: synthetic, a custom dataset, or a registry entry; names
    stay inside their directories; every parallel layout fits the configured machines."""
    from disttgl.data.registry import get_dataset

    check_names(config)
    check_parallel(config)
    check_preset(config)
    check_runs(config)
    custom = config.get("custom_datasets") or {}
    for name in config.get("optional_datasets") or []:
        if name != "synthetic" and name not in custom:
            try:
                get_dataset(name)
            except DataError as exc:
                raise DataError("config.yaml", f"optional_datasets: {exc.problem}") from None
    for i, name in enumerate(config["datasets"]):
        if name == "synthetic" or name in custom:
            continue
        try:
            get_dataset(name)
        except DataError as exc:
            raise DataError("config.yaml", f"datasets[{i}]: {exc.problem}; or describe it under "
                            "custom_datasets") from None
    for name, spec in custom.items():
        if spec.get("format") == "csv" and not spec.get("time_col"):
            raise DataError("config.yaml", f"custom_datasets.{name}: the csv format needs time_col "
                            "(and src_col, dst_col unless they are named src and dst)")


def present_datasets(config: dict[str, Any]) -> list[str]:
    """``optional_datasets`` that are here: converted already (``data_dir/NAME/graph.h5``), fetched
    (every raw file in ``data_dir/NAME/raw``), in a local ``data_mirror`` (flat or in a folder named
    after the dataset, as ``disttgl fetch`` looks), or — a URL mirror, which cannot be checked offline —
    named at all. Custom datasets are here when their files are. Order kept, duplicates of
    ``datasets`` dropped: the experiment configs run on what a machine has."""
    from disttgl.data.registry import get_dataset, raw_paths

    data_dir = Path(config.get("data_dir", "data"))
    mirror = config.get("data_mirror")
    custom = config.get("custom_datasets") or {}
    out = []
    for name in config.get("optional_datasets") or []:
        if name in config["datasets"] or name in out:
            continue
        if name in custom:
            here = all(Path(f).is_file() for f in custom[name]["files"])
        elif (data_dir / name / "graph.h5").is_file():
            here = True
        else:
            d = get_dataset(name)
            here = all(p.is_file() for p in raw_paths(name, data_dir / name / "raw"))
            if not here and mirror:
                text = os.fspath(mirror)
                if "://" in text and not text.startswith("file://"):
                    here = True
                else:
                    folder = Path(text.removeprefix("file://"))
                    here = all(any((base / f.filename).is_file() for base in
                                   (folder, *(folder / a for a in (d.name, d.name.lower(), *d.aliases))))
                               for f in d.files)
        if here:
            out.append(name)
    return out


def convert_arguments_for(config: dict[str, Any], dataset: str, inputs: list[str]) -> str:
    """The `disttgl convert` arguments (inputs and flags, without --out) for one dataset, shell-quoted."""
    custom = (config.get("custom_datasets") or {}).get(dataset)
    if custom is None:
        from disttgl.data.registry import convert_arguments

        return shlex.join(convert_arguments(dataset, inputs[0]))
    args = [*custom["files"], "--format", custom["format"]]
    if "bipartite" in custom:
        args.append("--bipartite" if custom["bipartite"] else "--no-bipartite")
    if custom.get("directed"):
        args.append("--directed")
    if custom.get("split"):
        args += ["--split", custom["split"]]
    for key in ("src_col", "dst_col", "time_col", "label_col", "separator"):
        if custom.get(key):
            args += [f"--{key.replace('_', '-')}", custom[key]]
    if custom.get("feature_cols"):
        args += ["--feature-cols", ",".join(custom["feature_cols"])]
    return shlex.join(args)


def check_preset(config: dict[str, Any]) -> None:
    """A preset that fixes the batch size (``tgb``: 200) needs ``batches.batch_size`` to match, or
    every training job would fail on its cache."""
    preset = (config.get("model") or {}).get("preset")
    if not preset:
        return
    from disttgl.train.config import PRESETS

    want = PRESETS.get(preset, {}).get("batch_size")
    have = (config.get("batches") or {}).get("batch_size", BatchParams.batch_size)
    if want is not None and have != want:
        raise DataError("config.yaml", f"model.preset = {preset} trains on batches of {want}, but batches.batch_size "
                                       f"= {have}: set it to {want}")
    for name, run in (config.get("runs") or {}).items():
        own = (run or {}).get("batch_size")
        if want is not None and own is not None and own != want:
            raise DataError("config.yaml", f"model.preset = {preset} trains on batches of {want}, but "
                                           f"runs.{name}.batch_size = {own}")


def check_runs(config: dict[str, Any]) -> None:
    """A run with ``pipeline: streams`` needs ``train.device`` cuda (CUDA streams), or its job would fail."""
    device = str((config.get("train") or {}).get("device", "cpu"))
    for name, run in (config.get("runs") or {}).items():
        if (run or {}).get("pipeline") == "streams" and not device.startswith("cuda"):
            raise DataError("config.yaml", f"runs.{name}.pipeline = streams runs on CUDA streams: it needs "
                                           f"train.device = cuda, got {device} (on CPU use pipeline: threads)")


def check_names(config: dict[str, Any]) -> None:
    """Dataset and run names are directory names: refuse ``.``, ``..`` and names starting with ``.``;
    refuse a name shared by ``runs``, ``snapshot_runs`` and ``tma_runs`` (one results directory), a
    random TMA run with ``clusters``, and ``{``/``}`` in data_dir/results_dir (Snakemake wildcards)."""
    named = [(f"datasets[{i}]", n) for i, n in enumerate(config.get("datasets") or [])]
    named += [(f"optional_datasets[{i}]", n) for i, n in enumerate(config.get("optional_datasets") or [])]
    named += [(f"custom_datasets.{n}", n) for n in (config.get("custom_datasets") or {})]
    named += [(f"runs.{n}", n) for n in (config.get("runs") or {})]
    named += [(f"snapshot_runs.{n}", n) for n in (config.get("snapshot_runs") or {})]
    named += [(f"tma_runs.{n}", n) for n in (config.get("tma_runs") or {})]
    for first, second in (("runs", "snapshot_runs"), ("runs", "tma_runs"), ("snapshot_runs", "tma_runs")):
        both = sorted(set(config.get(first) or {}) & set(config.get(second) or {}))
        if both:  # the same results/{dataset}/{NAME}/ directory
            raise DataError("config.yaml", f"{second}.{both[0]}: the name is a run of `{first}` too; rename one")
    for name, spec in (config.get("tma_runs") or {}).items():
        if (spec or {}).get("method") == "random" and (spec or {}).get("clusters") is not None:
            raise DataError("config.yaml", f"tma_runs.{name}.clusters: clusters apply to method super only")
        drop, parts = set((spec or {}).get("drop_parts") or []), int((spec or {}).get("parts") or 0)
        if any(p >= parts for p in drop) or (parts and len(drop) >= parts):
            raise DataError("config.yaml", f"tma_runs.{name}.drop_parts: {sorted(drop)} must be parts 0..{parts - 1} "
                                           "and leave at least one part a trainer")
    for key, name in named:
        if not _NAME.match(str(name)):
            raise DataError("config.yaml", f"{key}: name {name!r} must start with a letter, digit, '_' or '-' and "
                            "hold only letters, digits and _ . - (it names a directory; '.' and '..' would "
                            "leave data_dir/results_dir)")
    for key in ("data_dir", "results_dir"):
        value = str(config.get(key) or "")
        if "{" in value or "}" in value:
            raise DataError("config.yaml", f"{key}: {value!r}: '{{' and '}}' are not allowed (Snakemake wildcards)")


def check_parallel(config: dict[str, Any]) -> None:
    """Each layout in ``parallel.configs`` must be launchable as the rule train_parallel launches it:
    ``nodes`` torchruns of ``world / nodes`` trainers each (disttgl.parallel.launch). So ``nodes`` must divide k
    (a memory copy, i·j consecutive ranks, never spans machines; this also makes world divisible by
    nodes) and ``world / nodes`` must fit in ``procs_per_node`` (or ``gpus_per_node``), the trainers
    one machine holds. Fewer is allowed (e.g. a 1x1x1 reference layout on a 2-trainer machine): the
    launch only needs room, not a full machine. With neither set, only the first rule applies."""
    from disttgl.layout import Layout

    par = config.get("parallel") or {}
    configs = par.get("configs") or []
    if configs == "auto" or configs == ["auto"]:
        return
    nodes = par.get("nodes") or 1
    room, room_key = par.get("procs_per_node"), "parallel.procs_per_node"
    if not room and par.get("gpus_per_node"):
        room, room_key = par["gpus_per_node"], "parallel.gpus_per_node"
    for n, text in enumerate(configs):
        key = f"parallel.configs[{n}]"
        try:
            lay = Layout.parse(str(text))
        except ValueError as exc:
            raise DataError("config.yaml", f"{key}: {exc}") from None
        if lay.k % nodes:
            raise DataError("config.yaml", f"{key} = {lay}: parallel.nodes = {nodes} must divide k = {lay.k} "
                            "(a memory copy never spans machines)")
        per_node = lay.world // nodes
        if room and per_node > room:
            raise DataError("config.yaml", f"{key} = {lay}: {lay.world} trainers on parallel.nodes = {nodes} "
                            f"machine(s) need {per_node} per machine, but {room_key} = {room}")


# The batch cache's file name holds every disttgl.cache.format.BatchParams field (the content depends on
# each; i is minibatch_parallelism), so a changed parameter never reuses a stale cache. The rule
# `batches` reads them back from the name's wildcards. tests/test_workflow.py checks the field list.
CACHE_NAME = "b{batch_size}-i{i}-n{neighbors}-{strategy}-s{seed}-neg{neg_sets}-ev{eval_negatives}-tgl{tgl_compat}"


_CACHE_KEYS = frozenset(re.findall(r"{(\w+)}", CACHE_NAME)) - {"i"}


@functools.cache
def _cache_defaults() -> dict[str, Any]:
    """BatchParams' own defaults, for keys a ``batches:`` dict leaves out (the schema's defaults equal
    them: tests/test_workflow.py)."""

    return {f.name: f.default for f in dataclasses.fields(BatchParams) if f.name != "minibatch_parallelism"}


def batch_cache_name(batches: dict[str, Any], i: int) -> str:
    """The cache file name (without .h5) for the ``batches:`` config and minibatch parallelism ``i``."""
    b = dict(batches or {})
    if not _CACHE_KEYS <= b.keys():
        b = {**_cache_defaults(), **b}
    return CACHE_NAME.format(i=i, **{**b, "tgl_compat": int(bool(b["tgl_compat"]))})


def timed_run_units(workflow: Any) -> int:
    """The `timed_run` resource a training job takes: 1 when jobs run on this machine, 0 otherwise.

    Training jobs report speeds, so locally they run one at a time (global limit timed_run = 1, set in
    the Snakefile): side by side on shared cores both measure half a machine. Under a cluster executor
    (SLURM) each job gets its own CPUs (cpus_per_task) or nodes, and Snakemake would still enforce the
    global limit in the submitting process, serialising the whole cluster: there a job takes 0."""
    return 1 if getattr(workflow, "local_exec", True) else 0


# --------------------------------------------------------------------------- stale Snakemake locks
# Snakemake (file persistence backend) locks a working directory with .snakemake/locks/N.{input,output}.lock
# listing the files a run uses; they hold no process id, so after `kill -9` every rerun stops with
# LockException until `snakemake --unlock`. The onstart hook records which process holds the lock
# files present (owner record beside them; Snakemake's unlock deletes the whole directory, record
# included), and the next run's Snakefile deletes only lock files whose recorded owners are all dead
# on this host. A live run's locks, locks of another host and locks nobody recorded (a run killed
# between locking and onstart, or locked by another tool) stay: Snakemake then refuses as before.

LOCK_DIR = ".snakemake/locks"
_OWNER = "disttgl-owner-"


def _hostname() -> str:
    return socket.gethostname()


def _start_time(pid: int) -> str | None:
    stat = proc_stat(pid)
    return stat[19] if stat else None  # field 22: start time in clock ticks since boot (tells a reused pid)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    for d in Path("/proc").iterdir():
        stat = proc_stat(int(d.name)) if d.name.isdigit() else None
        if stat and stat[2] == str(pgid) and stat[0] != "Z":  # fields 3 (state) and 5 (process group)
            return True
    return False  # only zombies left (killed, not yet reaped)


def _owner_alive(rec: dict[str, Any]) -> bool:
    if rec.get("host") != _hostname():
        return True  # cannot tell: keep
    pid = rec.get("pid")
    if not isinstance(pid, int):
        return True
    if pid_alive(pid) and rec.get("start") in (None, _start_time(pid)):
        return True
    # Snakemake's jobs run in its process group: when it led the group (a shell job), jobs that
    # outlived it still write its outputs, so its locks still hold.
    return rec.get("pgid") == pid and _group_alive(pid)


def _lock_files(lock_dir: Path) -> dict[str, list[int]]:
    out = {}
    for f in sorted(lock_dir.glob("*.lock")) if lock_dir.is_dir() else []:
        try:
            st = f.stat()
        except OSError:
            continue
        out[f.name] = [st.st_ino, st.st_mtime_ns]
    return out


def record_lock_owner(lock_dir: str | os.PathLike = LOCK_DIR, pid: int | None = None) -> Path | None:
    """onstart (main process, locks taken): record this process as owner of the lock files present."""
    lock_dir = Path(lock_dir)
    pid = os.getpid() if pid is None else pid
    locks = _lock_files(lock_dir)
    if not locks:
        return None  # --nolock, or nothing to lock
    rec = {"pid": pid, "pgid": os.getpgid(pid), "start": _start_time(pid), "host": _hostname(), "locks": locks}
    path = lock_dir / f"{_OWNER}{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, path)
    return path


def remove_stale_locks(lock_dir: str | os.PathLike = LOCK_DIR) -> list[str]:
    """Delete the lock files left by dead Snakemake processes (see above); returns what it deleted."""
    lock_dir = Path(lock_dir)
    if not lock_dir.is_dir():
        return []
    present = _lock_files(lock_dir)
    live: set[tuple[str, int, int]] = set()
    dead: list[tuple[Path, dict[str, list[int]]]] = []
    for path in sorted(lock_dir.glob(f"{_OWNER}*.json")):
        try:
            rec = json.loads(path.read_text())
            locks = {str(k): list(v) for k, v in rec["locks"].items()}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            continue
        if _owner_alive(rec):
            live.update((k, *v) for k, v in locks.items())
        else:
            dead.append((path, locks))
    removed = []
    for path, locks in dead:
        for name, ident in locks.items():
            # the very file the dead owner recorded (same inode and mtime), and no live run claims it
            if present.get(name) == ident and (name, *ident) not in live:
                (lock_dir / name).unlink(missing_ok=True)
                removed.append(name)
        path.unlink(missing_ok=True)
    return removed
