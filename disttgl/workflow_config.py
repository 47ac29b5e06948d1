"""Checks and argument builders the Snakemake rules call, kept here so the rules stay thin and the
logic is unit-tested. The JSON schema checks types; this checks what a schema cannot."""

from __future__ import annotations

import shlex
from typing import Any

from disttgl.errors import DataError


def check_config(config: dict[str, Any]) -> None:
    """Every dataset named must be known: synthetic, a custom dataset, or a registry entry."""
    from disttgl.registry import get_dataset

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
