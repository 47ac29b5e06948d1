# RandomTMA / SuperTMA (config `tma_runs:`, docs/design.md §14): the graph cut into parts
# (data/{dataset}/parts/{method}-{rule}-P{parts}[-C{clusters}]-s{seed}/), then one trainer per part,
# weights averaged every sync_every, results/{dataset}/{NAME}/summary.json (+ rounds.jsonl,
# metrics.jsonl, trainer-P/). A TMA run has no --resume: a rerun starts afresh (disttgl tma clears
# the run directory, summary.json first). The path and flag functions are in common_systems.smk.


rule partition:
    input:
        graph_path("{dataset}"),
    output:
        f"{DATA}/{{dataset}}/parts/{{part}}/partition.json",
    wildcard_constraints:
        part=PARTITION,
    params:
        out=partition_dir,
        part=partition_args,
    log:
        "logs/{dataset}/partition-{part}.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl partition {input:q} {params.part} --out {params.out:q} > {log:q} 2>&1"


rule tma:
    input:
        partition=tma_partition_file,
        graph=graph_path("{dataset}"),
        static=tma_static,
    output:
        f"{RESULTS}/{{dataset}}/{{trun}}/summary.json",
    wildcard_constraints:
        trun=tma_run_names(),
    params:
        parts=tma_parts_dir,
        out=run_dir,
        args=tma_args,
        model=model_args(),
        threads=config["parallel"]["threads_per_rank"],
    threads: tma_threads
    resources:
        timed_run=timed_run,
        **tma_slurm_resources(),
    log:
        "logs/{dataset}/tma-{trun}.log",
    benchmark:
        "logs/{dataset}/tma-{trun}.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl tma {params.parts:q} --graph {input.graph:q} --out {params.out:q} {params.args} {params.model}"
        " --threads {params.threads} > {log:q} 2>&1"
