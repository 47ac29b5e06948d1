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
