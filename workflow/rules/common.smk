# Configuration checks and path helpers shared by every stage.
# Shell commands quote every value that comes from the config or a path ({x:q}); values built with
# shlex.join (convert arguments, static_args, the fetch mirror) are already quoted and go in bare.

import shlex
import sys

from disttgl.workflow_config import (batch_cache_name, check_config, record_lock_owner, remove_stale_locks,
                                     timed_run_units)

validate(config, "../schemas/config.schema.yaml")
check_config(config)

DATA = config["data_dir"]
RESULTS = config["results_dir"]

# Timed runs (train, train_parallel, pretrain) take one `timed_run` each and at most one runs at a
# time, so a reported speed is never measured beside another training job on the same cores. The
# limit is set here rather than in a profile so that it holds for `snakemake --cores all` with any
# profile (or none) and survives `--resources other=N`; `--resources timed_run=N` still overrides it.
# Under SLURM a job takes 0 units (timed_run_units): the cluster gives each job its own CPUs, and the
# submitting Snakemake would otherwise submit one training job at a time.
if "timed_run" not in workflow.global_resources:
    workflow.global_resources["timed_run"] = 1


def model_args():
    """The model and optimiser flags of train, pretrain and train_parallel, in one place (quoted).
    `lr`/`loss` null leave them to disttgl (or to `preset`): the lr derived from the training batches
    (logged), the loss binary CE."""
    m = config["model"]
    args = ["--dim", m["dim"], "--heads", m["heads"], "--dropout", m["dropout"]]
    for key in ("lr", "loss"):
        if m.get(key) is not None:
            args += [f"--{key}", m[key]]
    if m.get("preset"):
        args += ["--preset", m["preset"]]
    return shlex.join(map(str, args))


def timed_run(wildcards):
    return timed_run_units(workflow)


# After `kill -9` Snakemake's lock files stay behind; delete those whose recorded owner is dead (see
# disttgl.workflow_config). Only the main process: job subprocesses parse this file too.
if workflow.is_main_process:
    for _name in remove_stale_locks():
        print(f"removed stale Snakemake lock .snakemake/locks/{_name} (its snakemake process is gone)",
              file=sys.stderr)


onstart:
    record_lock_owner()


def graph_path(dataset):
    return f"{DATA}/{dataset}/graph.h5"


def batch_cache_path(dataset, i):
    """The cache that training with minibatch parallelism ``i`` reads (keyed by every batch parameter)."""
    return f"{DATA}/{dataset}/batches/{batch_cache_name(config['batches'], i)}.h5"


def static_args(wildcards, input):
    """train/train_parallel: the frozen static memory and how often training leaves its rows out."""
    if not input.static:
        return ""
    return shlex.join(["--static", *map(str, input.static),
                       "--static-dropout", str(config["model"]["static_dropout"])])
