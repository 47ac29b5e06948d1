# MSPipe's inputs (disttgl.pipeline): the profiled stage times of a dataset's batches (runs with
# `staleness: auto`) and the similar-nodes table of staleness mitigation (runs with `mitigation: similar`).


rule profile:
    input:
        graph=graph_path("{dataset}"),
        cache=lambda w: batch_cache_path(w.dataset, 1),
    output:
        stage_times_path("{dataset}", "{memory}"),
    wildcard_constraints:
        memory="gru|rnn|apan",
    params:
        model=model_args(),
        t=config["train"],
    threads: config["train"]["threads"]
    resources:
        timed_run=timed_run,  # stage times measured beside another job would set the wrong k
    log:
        "logs/{dataset}/profile-{memory}.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl profile {input.graph:q} {input.cache:q} --out {output:q} --memory {wildcards.memory}"
        " {params.model} --device {params.t[device]:q} --seed {params.t[seed]:q} --threads {threads}"
        " > {log:q} 2>&1"


rule similar:
    input:
        unpack(similar_inputs),
    output:
        similar_path("{dataset}", "{method}"),
    wildcard_constraints:
        method="static-cosine|jaccard|cooc",
    params:
        static=similar_static_args,
        k=config["mitigation"]["similar_nodes"],
    log:
        "logs/{dataset}/similar-{method}.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl similar {input.graph:q} --method {wildcards.method:q} {params.static} --k {params.k:q}"
        " --out {output:q} > {log:q} 2>&1"
