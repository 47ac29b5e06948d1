# Static node memory: the TGN with a learnable per-node table instead of the GRU memory, trained on
# the i = 1 batch cache with early stopping on validation MRR (disttgl pretrain).


rule pretrain:
    input:
        graph=graph_path("{dataset}"),
        cache=lambda w: batch_cache_path(w.dataset, 1),
    output:
        f"{DATA}/{{dataset}}/static_memory.h5",
    params:
        m=config["model"],
        p=config["pretrain"],
        t=config["train"],
    threads: config["train"].get("threads", 2)
    log:
        "logs/{dataset}/pretrain.log",
    benchmark:
        "logs/{dataset}/pretrain.benchmark.tsv"
    shell:
        "disttgl pretrain {input.graph} {input.cache} --out {output}"
        " --epochs {params.p[epochs]} --patience {params.p[patience]}"
        " --dim {params.m[dim]} --heads {params.m[heads]} --dropout {params.m[dropout]}"
        " --lr {params.m[lr]} --loss {params.m[loss]}"
        " --device {params.t[device]} --seed {params.t[seed]} --threads {threads} > {log} 2>&1"
