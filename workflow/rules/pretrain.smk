# Static node memory: the TGN with a learnable per-node table instead of the GRU memory, trained on
# the i = 1 batch cache with early stopping on validation MRR (disttgl pretrain).


rule pretrain:
    input:
        graph=graph_path("{dataset}"),
        cache=lambda w: batch_cache_path(w.dataset, 1),
    output:
        static_memory_path("{dataset}"),
    params:
        model=model_args(),
        p=config["pretrain"],
        t=config["train"],
    threads: config["train"]["threads"]
    resources:
        timed_run=timed_run,
    log:
        "logs/{dataset}/pretrain.log",
    benchmark:
        "logs/{dataset}/pretrain.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl pretrain {input.graph:q} {input.cache:q} --out {output:q}"
        " --epochs {params.p[epochs]:q} --patience {params.p[patience]:q}"
        " {params.model}"
        " --device {params.t[device]:q} --seed {params.t[seed]:q} --threads {threads} > {log:q} 2>&1"
