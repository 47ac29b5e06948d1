# Single-process training runs (config `runs:`; distributed layouts are in parallel.smk): results/{dataset}/{run}/summary.json
# (+ metrics.jsonl, checkpoint.pt). Only summary.json is a declared output so that Snakemake never
# deletes the checkpoint of a killed job: the rerun passes --resume and continues from it.


rule train:
    input:
        graph=graph_path("{dataset}"),
        cache=run_cache,
        static=run_static,
        tgb=tgb_input,
        stages=run_stage_times,
        similar=run_similar,
    output:
        f"{RESULTS}/{{dataset}}/{{run}}/summary.json",
    wildcard_constraints:
        run="|".join(config["runs"]),
    params:
        out=run_dir,
        static=static_args,
        eval=eval_args,
        run=run_args,
        epochs=run_epochs,
        model=model_args(),
        t=config["train"],
    threads: config["train"]["threads"]
    resources:
        timed_run=timed_run,
    log:
        "logs/{dataset}/train-{run}.log",
    benchmark:
        "logs/{dataset}/train-{run}.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl train {input.graph:q} {input.cache:q} --out {params.out:q} {params.static}{params.eval}{params.run}"
        " --epochs {params.epochs:q}"
        " {params.model}"
        " --device {params.t[device]:q} --seed {params.t[seed]:q} --threads {threads} --resume > {log:q} 2>&1"
