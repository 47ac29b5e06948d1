# Single-process training runs (config `runs:`; distributed layouts are in parallel.smk): results/{dataset}/{run}/summary.json
# (+ metrics.jsonl, checkpoint.pt). Only summary.json is a declared output so that Snakemake never
# deletes the checkpoint of a killed job: the rerun passes --resume and continues from it.


def train_summaries():
    """Every configured (dataset, run) summary: the training targets for `rule all`."""
    return expand(f"{RESULTS}/{{dataset}}/{{run}}/summary.json", dataset=config["datasets"], run=list(config["runs"]))


def _run_config(wildcards):
    return config["runs"][wildcards.run]


def _static_input(wildcards):
    if _run_config(wildcards).get("static_memory", False):
        return [f"{DATA}/{wildcards.dataset}/static_memory.h5"]
    return []


rule train:
    input:
        graph=graph_path("{dataset}"),
        cache=lambda w: batch_cache_path(w.dataset, 1),
        static=_static_input,
    output:
        f"{RESULTS}/{{dataset}}/{{run}}/summary.json",
    wildcard_constraints:
        run="|".join(config["runs"]),
    params:
        out=lambda w: f"{RESULTS}/{w.dataset}/{w.run}",
        static=static_args,
        epochs=lambda w: _run_config(w).get("epochs", config["train"]["epochs"]),
        model=model_args(),
        t=config["train"],
    threads: config["train"].get("threads", 2)
    resources:
        timed_run=timed_run,
    log:
        "logs/{dataset}/train-{run}.log",
    benchmark:
        "logs/{dataset}/train-{run}.benchmark.tsv"
    shell:
        "disttgl train {input.graph:q} {input.cache:q} --out {params.out:q} {params.static}"
        " --epochs {params.epochs:q}"
        " {params.model}"
        " --device {params.t[device]:q} --seed {params.t[seed]:q} --threads {threads} --resume > {log:q} 2>&1"
