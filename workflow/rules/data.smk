# Data stage: fetch raw files (or generate the synthetic set) and convert them to the graph store.


rule synth:
    output:
        f"{DATA}/synthetic/graph.h5",
    params:
        s=config["synthetic"],
        bipartite="--bipartite" if config["synthetic"]["bipartite"] else "",
    log:
        "logs/synthetic/synth.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl synth --out {output:q} --events {params.s[events]:q} --nodes {params.s[nodes]:q}"
        " --edge-dim {params.s[edge_dim]:q} --seed {params.s[seed]:q}"
        " {params.bipartite} > {log:q} 2>&1"


rule fetch:
    output:
        directory(f"{DATA}/{{dataset}}/raw"),
    wildcard_constraints:
        dataset="(?!synthetic$)[A-Za-z0-9_.-]+",
    params:
        mirror=mirror_args(),
    log:
        "logs/{dataset}/fetch.log",
    retries: 1
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl fetch {wildcards.dataset:q} --out {output:q} {params.mirror} > {log:q} 2>&1"


rule convert:
    input:
        convert_inputs,
    output:
        f"{DATA}/{{dataset}}/graph.h5",
    wildcard_constraints:
        dataset="(?!synthetic$)[A-Za-z0-9_.-]+",
    params:
        args=convert_args,
    log:
        "logs/{dataset}/convert.log",
    benchmark:
        "logs/{dataset}/convert.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl convert {params.args} --out {output:q} > {log:q} 2>&1"
