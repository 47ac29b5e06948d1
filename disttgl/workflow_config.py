"""Checks and argument builders the Snakemake rules call, kept here so the rules stay thin and the
logic is unit-tested. The JSON schema checks types; this checks what a schema cannot."""

from __future__ import annotations

import re
import shlex
from typing import Any

from disttgl.errors import DataError

# A dataset or run name becomes a directory under data_dir/results_dir: no "." or "..", nor a hidden
# name (the schema's pattern alone lets both through, and "{dataset}" = ".." escapes data_dir).
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def check_config(config: dict[str, Any]) -> None:
    """Every dataset named must be known: synthetic, a custom dataset, or a registry entry; names
    stay inside their directories; every parallel layout fits the configured machines."""
    from disttgl.registry import get_dataset

    check_names(config)
    check_parallel(config)
    custom = config.get("custom_datasets") or {}
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


def convert_arguments_for(config: dict[str, Any], dataset: str, inputs: list[str]) -> str:
    """The `disttgl convert` arguments (inputs and flags, without --out) for one dataset, shell-quoted."""
    custom = (config.get("custom_datasets") or {}).get(dataset)
    if custom is None:
        from disttgl.registry import convert_arguments

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


def check_names(config: dict[str, Any]) -> None:
    """Dataset and run names are directory names: refuse ``.``, ``..`` and names starting with ``.``;
    refuse ``{``/``}`` in data_dir/results_dir (Snakemake would read them as wildcards)."""
    named = [(f"datasets[{i}]", n) for i, n in enumerate(config.get("datasets") or [])]
    named += [(f"custom_datasets.{n}", n) for n in (config.get("custom_datasets") or {})]
    named += [(f"runs.{n}", n) for n in (config.get("runs") or {})]
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
    ``nodes`` torchruns of ``world / nodes`` trainers each (disttgl.launch). So ``nodes`` must divide k
    (a memory copy, i·j consecutive ranks, never spans machines; this also makes world divisible by
    nodes) and ``world / nodes`` must fit in ``procs_per_node`` (or ``gpus_per_node``), the trainers
    one machine holds. Fewer is allowed (e.g. a 1x1x1 reference layout on a 2-trainer machine): the
    launch only needs room, not a full machine. With neither set, only the first rule applies."""
    from disttgl.schedule import Layout

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


# The batch cache's file name holds every disttgl.batches.BatchParams field (the content depends on
# each; i is minibatch_parallelism), so a changed parameter never reuses a stale cache. The rule
# `batches` reads them back from the name's wildcards. tests/test_workflow.py checks the field list.
CACHE_NAME = "b{batch_size}-i{i}-n{neighbors}-{strategy}-s{seed}-neg{neg_sets}-ev{eval_negatives}-tgl{tgl_compat}"
_CACHE_DEFAULTS = {"batch_size": 600, "neg_sets": 32, "eval_negatives": 49, "neighbors": 10,
                   "strategy": "recent", "seed": 0, "tgl_compat": False}  # = the schema's defaults


def batch_cache_name(batches: dict[str, Any], i: int) -> str:
    """The cache file name (without .h5) for the ``batches:`` config and minibatch parallelism ``i``."""
    b = {**_CACHE_DEFAULTS, **(batches or {})}
    return CACHE_NAME.format(i=i, **{**b, "tgl_compat": int(bool(b["tgl_compat"]))})


def timed_run_units(workflow: Any) -> int:
    """The `timed_run` resource a training job takes: 1 when jobs run on this machine, 0 otherwise.

    Training jobs report speeds, so locally they run one at a time (global limit timed_run = 1, set in
    the Snakefile): side by side on shared cores both measure half a machine. Under a cluster executor
    (SLURM) each job gets its own CPUs (cpus_per_task) or nodes, and Snakemake would still enforce the
    global limit in the submitting process, serialising the whole cluster: there a job takes 0."""
    return 1 if getattr(workflow, "local_exec", True) else 0
