# Configuration checks, targets and every input/params function of the rules, in one place (as in
# the snakemake-workflows layout): the rule files hold only rules.
# Shell commands quote every value that comes from the config or a path ({x:q}); values built with
# shlex.join (convert arguments, model_args, static_args, the fetch mirror) are already quoted and go
# in bare.
#
# The config is validated with the schema's defaults filled in (snakemake.utils.validate sets them),
# so the functions below read config[...][...] directly: a default lives in the schema, which
# tests/test_workflow.py checks against disttgl's own dataclasses (TrainConfig, BatchParams).

import functools
import os
import re
import shlex
import sys

from snakemake.utils import validate

from disttgl.layout import Layout
from disttgl.parallel.schedule import choose_parallelism
from disttgl.workflow_config import (
    CACHE_NAME,
    batch_cache_name,
    check_config,
    convert_arguments_for,
    present_datasets,
    record_lock_owner,
    remove_stale_locks,
    timed_run_units,
)


validate(config, "../schemas/config.schema.yaml")
check_config(config)
# the experiment configs' optional datasets join when this machine has them (fetched, converted, mirrored)
config["datasets"] = [*config["datasets"], *present_datasets(config)]

DATA = config["data_dir"]
RESULTS = config["results_dir"]
REPORT = f"{RESULTS}/report"

# Timed runs (train, train_parallel, pretrain) take one `timed_run` each and at most one runs at a
# time, so a reported speed is never measured beside another training job on the same cores. The
# limit is set here rather than in a profile so that it holds for `snakemake --cores all` with any
# profile (or none) and survives `--resources other=N`; `--resources timed_run=N` still overrides it.
# Under SLURM a job takes 0 units (timed_run_units): the cluster gives each job its own CPUs, and the
# submitting Snakemake would otherwise submit one training job at a time.
if "timed_run" not in workflow.global_resources:
    workflow.global_resources["timed_run"] = 1

# After `kill -9` Snakemake's lock files stay behind; delete those whose recorded owner is dead (see
# disttgl.workflow_config). Only the main process: job subprocesses parse this file too.
if workflow.is_main_process:
    for _name in remove_stale_locks():
        print(f"removed stale Snakemake lock .snakemake/locks/{_name} (its snakemake process is gone)",
              file=sys.stderr)


onstart:
    record_lock_owner()


# --------------------------------------------------------------------------- targets

def train_runs():
    """Every configured single-process run, as DATASET/RUN."""
    return [f"{dataset}/{run}" for dataset in config["datasets"] for run in config["runs"]]


def parallel_layouts():
    """The configured i x j x k layouts (`auto`: one, chosen from nodes x trainers per node)."""
    return list(_parallel_layouts())


@functools.cache  # the config is fixed once parsed; `auto` logs its choice once
def _parallel_layouts():
    par = config["parallel"]
    if par["configs"] == "auto" or par["configs"] == ["auto"]:
        lay, why = choose_parallelism(par["nodes"], procs_per_node(), config["train"]["epochs"])
        print(f"parallel: auto -> {lay}: {why}", file=sys.stderr)
        return (str(lay),)
    return tuple(str(Layout.parse(str(c))) for c in par["configs"])


def parallel_runs():
    """Every configured distributed run, as DATASET/IxJxK."""
    return [f"{dataset}/{par}" for dataset in config["datasets"] for par in parallel_layouts()]


def snapshot_train_runs():
    """Every configured snapshot DGNN run, as DATASET/NAME."""
    return [f"{dataset}/{run}" for dataset in config["datasets"] for run in config["snapshot_runs"]]


def tma_train_runs():
    """Every configured RandomTMA/SuperTMA run, as DATASET/NAME."""
    return [f"{dataset}/{run}" for dataset in config["datasets"] for run in config["tma_runs"]]


def report_runs():
    """Every configured run (single-process runs, layouts, snapshot and TMA runs): what the report
    expects, so that a run without a readable summary is listed as missing/failed, never dropped."""
    return train_runs() + parallel_runs() + snapshot_train_runs() + tma_train_runs()


def train_summaries():
    """The summaries of the single-process runs (rule train's targets)."""
    return [f"{RESULTS}/{run}/summary.json" for run in train_runs()]


def parallel_summaries():
    """The summaries of the distributed runs (rule train_parallel's targets)."""
    return [f"{RESULTS}/{run}/summary.json" for run in parallel_runs()]


def report_summaries():
    return [f"{RESULTS}/{run}/summary.json" for run in report_runs()]


def report_run_dirs(wildcards, input):
    return [os.path.dirname(summary) for summary in input.summaries]


def final_outputs():
    """What the default target `all` builds: the report, which takes every configured run's summary."""
    return [f"{REPORT}/accuracy.html"]


# --------------------------------------------------------------------------- paths

def graph_path(dataset):
    return f"{DATA}/{dataset}/graph.h5"


def batch_cache_path(dataset, i, batch_size=None):
    """The cache that training with minibatch parallelism ``i`` reads (keyed by every batch parameter);
    ``batch_size`` overrides batches.batch_size (a run's own, for the batch-size sweep)."""
    batches = {**config["batches"], **({"batch_size": batch_size} if batch_size else {})}
    return f"{DATA}/{dataset}/batches/{batch_cache_name(batches, i)}.h5"


def static_memory_path(dataset):
    return f"{DATA}/{dataset}/static_memory.h5"


def run_dir(wildcards, output):
    """train/train_parallel: the run directory is the folder of the declared summary.json."""
    return os.path.dirname(output[0])


# --------------------------------------------------------------------------- data

def convert_inputs(wildcards):
    """convert: a custom dataset's own files, else the fetched raw folder."""
    custom = config["custom_datasets"].get(wildcards.dataset)
    return custom["files"] if custom else [f"{DATA}/{wildcards.dataset}/raw"]


def convert_args(wildcards, input):
    return convert_arguments_for(config, wildcards.dataset, list(input))


def mirror_args():
    """fetch: where the raw files come from on offline clusters (`data_mirror`), quoted."""
    return shlex.join(["--mirror", config["data_mirror"]]) if config["data_mirror"] else ""


# --------------------------------------------------------------------------- training

def model_args():
    """The model and optimiser flags of train, pretrain and train_parallel, in one place (quoted).
    `lr`/`loss` null leave them to disttgl (or to `preset`): the lr derived from the training batches
    (logged), the loss binary CE."""
    m = config["model"]
    args = ["--dim", m["dim"], "--heads", m["heads"], "--dropout", m["dropout"]]
    for key in ("lr", "loss", "preset"):
        if m[key] is not None:
            args += [f"--{key}", m[key]]
    return shlex.join(map(str, args))


def tgb_datasets():
    """Registry datasets read from TGB's files: their convert writes TGB's own negatives."""
    from disttgl.data.registry import DATASETS

    return sorted(d.name for d in DATASETS.values() if d.tgb_name)


def dataset_except(names):
    """A `dataset` wildcard constraint that matches any dataset name but NAMES. The constraint sits
    inside the output's regex, so the look-ahead ends at the next path separator, not at `$`."""
    alternatives = "|".join(map(re.escape, names))
    return f"(?!(?:{alternatives})/)[A-Za-z0-9_.-]+"


def tgb_negatives_path(dataset):
    return f"{DATA}/{dataset}/tgb_negatives.h5"


def tgb_input(wildcards):
    """train/train_parallel with `train.eval: tgb`: the dataset's TGB negatives."""
    return [tgb_negatives_path(wildcards.dataset)] if config["train"]["eval"] == "tgb" else []


def eval_args(wildcards, input):
    """train/train_parallel: ` --eval tgb` and its negatives (with the space that separates them from
    the flags before), or nothing."""
    if not input.tgb:
        return ""
    args = ["--eval", "tgb", "--tgb-negatives", str(input.tgb[0]),
            "--tgb-batch-size", str(config["train"]["tgb_batch_size"])]
    return f" {shlex.join(args)}"


def tgb_negatives_args():
    t = config["tgb_negatives"]
    args = ["--seed", str(t["seed"])]
    if t["num_neg"]:
        args = ["--num-neg", str(t["num_neg"]), *args]
    return shlex.join(args)


def static_args(wildcards, input):
    """train/train_parallel: the frozen static memory and how often training leaves its rows out."""
    if not input.static:
        return ""
    return shlex.join(["--static", *map(str, input.static),
                       "--static-dropout", str(config["model"]["static_dropout"])])


def timed_run(wildcards):
    return timed_run_units(workflow)


def run_config(wildcards):
    return config["runs"][wildcards.run]


def run_cache(wildcards):
    """train: the i = 1 cache, with the run's own `batch_size` when it has one."""
    return batch_cache_path(wildcards.dataset, 1, run_config(wildcards).get("batch_size"))


def run_epochs(wildcards):
    """A run's own `epochs`, else train.epochs."""
    return run_config(wildcards).get("epochs", config["train"]["epochs"])


def run_static(wildcards):
    """train: the static memory when the run has `static_memory: true`."""
    return [static_memory_path(wildcards.dataset)] if run_config(wildcards)["static_memory"] else []


# --------------------------------------------------------------------------- MSPipe (pipeline.smk)

def stage_times_path(dataset, memory):
    """The five stage times of `memory`'s model (gru, rnn, apan: their stages differ) on `dataset`."""
    return f"{DATA}/{dataset}/stages-{memory}.json"


def similar_path(dataset, method):
    return f"{DATA}/{dataset}/similar-{method}.h5"


def run_stage_times(wildcards):
    """train: the profiled stage times of a run with `staleness: auto`."""
    auto = str(run_config(wildcards).get("staleness", 1)) == "auto"
    return [stage_times_path(wildcards.dataset, run_config(wildcards).get("memory", "gru"))] if auto else []


def run_similar(wildcards):
    """train: the similar-nodes file of a run with `mitigation: similar`."""
    r = run_config(wildcards)
    if r.get("mitigation", "none") != "similar":
        return []
    return [similar_path(wildcards.dataset, r.get("similar_method", "jaccard"))]


def run_args(wildcards, input):
    """train: the run's own flags, its task, memory kind and MSPipe's settings (with the space before
    them), or nothing."""
    r = run_config(wildcards)
    args = []
    if r.get("task", "link") != "link":
        args += ["--task", r["task"]]
    if r.get("memory", "gru") != "gru":
        args += ["--memory", r["memory"]]
    if str(r.get("staleness", 1)) != "1":
        args += ["--staleness", str(r["staleness"])]
    if input.stages:
        args += ["--stage-times", str(input.stages[0])]
    if input.similar:
        args += ["--mitigation", "similar", "--similar", str(input.similar[0])]
    if r.get("pipeline", "off") != "off":
        args += ["--pipeline", r["pipeline"]]
    return f" {shlex.join(args)}" if args else ""


def similar_inputs(wildcards):
    """similar: the graph, and the static memory for static-cosine."""
    static = [static_memory_path(wildcards.dataset)] if wildcards.method == "static-cosine" else []
    return {"graph": graph_path(wildcards.dataset), "static": static}


def similar_static_args(wildcards, input):
    return shlex.join(["--static", str(input.static[0])]) if input.static else ""


# --------------------------------------------------------------------------- distributed training
# One torchrun per node: locally `torchrun --standalone`; in a multi-node SLURM job `srun` starts one
# per node and they meet by c10d rendezvous on the allocation's first node (disttgl launch).
# SLURM resources: nodes and tasks (one per node); mpi="srun" when several nodes (the executor then
# runs the command in the batch script, which calls srun itself; for one node the executor's own
# `srun -n1` wraps it, as its MPI mode refuses tasks=1); gres + tasks_per_gpu=0 on GPUs.

def procs_per_node():
    """Trainers one machine holds: procs_per_node, else gpus_per_node, else 2 (for `configs: auto`)."""
    par = config["parallel"]
    return par["procs_per_node"] or par["gpus_per_node"] or 2


def layout(wildcards):
    return Layout.parse(wildcards.par)


def layout_nodes(wildcards):
    nodes, lay = config["parallel"]["nodes"], layout(wildcards)
    if lay.k % nodes:
        raise ValueError(f"parallel.nodes = {nodes} must divide k = {lay.k} of {wildcards.par}: "
                         "a memory copy never spans machines")
    return nodes


def layout_procs(wildcards):
    """Trainers per node of a layout: world / nodes."""
    return layout(wildcards).world // layout_nodes(wildcards)


def layout_threads(wildcards):
    return layout_procs(wildcards) * config["parallel"]["threads_per_rank"]


def layout_cache(wildcards):
    return batch_cache_path(wildcards.dataset, layout(wildcards).i)


def layout_static(wildcards):
    return [static_memory_path(wildcards.dataset)] if config["parallel"]["static_memory"] else []


def slurm_resources(nodes=layout_nodes, procs=layout_procs, threads=layout_threads):
    """The SLURM executor's resources (ignored by local runs) of a job that `disttgl launch` starts: one
    task per node (srun + one torchrun each when there are several), the node's ranks' CPUs, and with
    CUDA a GPU per rank. Defaults: train_parallel's layout functions; snapshot_train passes its own."""
    res = dict(
        nodes=nodes,
        tasks=nodes,
        mpi=lambda w: "srun" if nodes(w) > 1 else "",
        cpus_per_task=threads,
    )
    if str(config["train"]["device"]).startswith("cuda"):
        res["gres"] = lambda w: f"gpu:{procs(w)}"
        res["tasks_per_gpu"] = 0
    return res


# The snapshot DGNN and RandomTMA/SuperTMA functions (snapshot.smk, tma.smk).
include: "common_systems.smk"
