# Distributed i x j x k training (config `parallel:`): results/{dataset}/{I}x{J}x{K}/summary.json.
# One torchrun per node: locally `torchrun --standalone`; in a multi-node SLURM job `srun` starts one
# per node and they meet by c10d rendezvous on the allocation's first node (disttgl launch).
# SLURM resources: nodes and tasks (one per node); mpi="srun" when several nodes (the executor then
# runs the command in the batch script, which calls srun itself; for one node the executor's own
# `srun -n1` wraps it, as its MPI mode refuses tasks=1); gres + tasks_per_gpu=0 on GPUs.

import sys

from disttgl.parallel.schedule import Layout, choose_parallelism

PARALLEL = {"configs": [], "nodes": 1, "procs_per_node": None, "static_memory": False, "timeout": 300,
            "threads_per_rank": 1, "max_restarts": 0, **(config.get("parallel") or {})}


def _procs_per_node():
    if PARALLEL["procs_per_node"]:
        return PARALLEL["procs_per_node"]
    return PARALLEL.get("gpus_per_node") or 2


def parallel_layouts():
    """The configured i x j x k layouts (`auto`: one, chosen from nodes x trainers per node)."""
    configs = PARALLEL["configs"]
    if configs == "auto" or configs == ["auto"]:
        lay, why = choose_parallelism(PARALLEL["nodes"], _procs_per_node(), config["train"]["epochs"])
        print(f"parallel: auto -> {lay}: {why}", file=sys.stderr)
        return [str(lay)]
    return [str(Layout.parse(str(c))) for c in configs]


def parallel_summaries():
    """Every configured (dataset, layout) summary: the distributed training targets for `rule all`."""
    return expand(f"{RESULTS}/{{dataset}}/{{par}}/summary.json", dataset=config["datasets"], par=parallel_layouts())


def _layout(w):
    return Layout.parse(w.par)


def _nodes(w):
    nodes, lay = PARALLEL["nodes"], _layout(w)
    if lay.k % nodes:
        raise ValueError(f"parallel.nodes = {nodes} must divide k = {lay.k} of {w.par}: "
                         "a memory copy never spans machines")
    return nodes


def _gpu():
    return str(config["train"].get("device", "cpu")).startswith("cuda")


def _slurm_resources():
    res = dict(
        nodes=lambda w: _nodes(w),
        tasks=lambda w: _nodes(w),
        mpi=lambda w: "srun" if _nodes(w) > 1 else "",
        cpus_per_task=lambda w: _layout(w).world // _nodes(w) * PARALLEL["threads_per_rank"],
    )
    if _gpu():
        res["gres"] = lambda w: f"gpu:{_layout(w).world // _nodes(w)}"
        res["tasks_per_gpu"] = 0
    return res


def _parallel_static(w):
    return [f"{DATA}/{w.dataset}/static_memory.h5"] if PARALLEL["static_memory"] else []


rule train_parallel:
    input:
        graph=graph_path("{dataset}"),
        cache=lambda w: batch_cache_path(w.dataset, _layout(w).i),
        static=_parallel_static,
    output:
        f"{RESULTS}/{{dataset}}/{{par}}/summary.json",
    wildcard_constraints:
        par=r"\d+x\d+x\d+",
    params:
        out=lambda w: f"{RESULTS}/{w.dataset}/{w.par}",
        static=static_args,
        nodes=_nodes,
        nproc=lambda w: _layout(w).world // _nodes(w),
        p=PARALLEL,
        model=model_args(),
        t=config["train"],
    threads: lambda w: _layout(w).world // _nodes(w) * PARALLEL["threads_per_rank"]
    resources:
        timed_run=timed_run,
        **_slurm_resources(),
    log:
        "logs/{dataset}/train-{par}.log",
    benchmark:
        "logs/{dataset}/train-{par}.benchmark.tsv"
    shell:
        "disttgl launch --nodes {params.nodes} --nproc-per-node {params.nproc}"
        " --max-restarts {params.p[max_restarts]:q} --"
        " {input.graph:q} {input.cache:q} --out {params.out:q} {params.static}"
        " --parallelism {wildcards.par} --epochs {params.t[epochs]:q} --timeout {params.p[timeout]:q}"
        " {params.model}"
        " --device {params.t[device]:q} --seed {params.t[seed]:q}"
        " --threads {params.p[threads_per_rank]:q} --no-progress --resume > {log:q} 2>&1"
