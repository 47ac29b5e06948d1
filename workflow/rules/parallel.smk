# Distributed i x j x k training (config `parallel:`): results/{dataset}/{I}x{J}x{K}/summary.json,
# started by `disttgl launch` (torchrun on one node; srun + one torchrun per node under SLURM). The
# layout, node and SLURM resource functions are in common.smk.


rule train_parallel:
    input:
        graph=graph_path("{dataset}"),
        cache=layout_cache,
        static=layout_static,
        tgb=tgb_input,
    output:
        f"{RESULTS}/{{dataset}}/{{par}}/summary.json",
    wildcard_constraints:
        par=r"\d+x\d+x\d+",
    params:
        out=run_dir,
        static=static_args,
        eval=eval_args,
        nodes=layout_nodes,
        nproc=layout_procs,
        p=config["parallel"],
        model=model_args(),
        t=config["train"],
    threads: layout_threads
    resources:
        timed_run=timed_run,
        **slurm_resources(),
    log:
        "logs/{dataset}/train-{par}.log",
    benchmark:
        "logs/{dataset}/train-{par}.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl launch --nodes {params.nodes} --nproc-per-node {params.nproc}"
        " --max-restarts {params.p[max_restarts]:q} --"
        " {input.graph:q} {input.cache:q} --out {params.out:q} {params.static}{params.eval}"
        " --parallelism {wildcards.par} --epochs {params.t[epochs]:q} --timeout {params.p[timeout]:q}"
        " {params.model}"
        " --device {params.t[device]:q} --seed {params.t[seed]:q}"
        " --threads {params.p[threads_per_rank]:q} --no-progress --resume > {log:q} 2>&1"
