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
        " --edge-dim {params.s[edge_dim]:q} --seed {params.s[seed]:q} --labels {params.s[labels]:q}"
        " {params.bipartite} > {log:q} 2>&1"


rule fetch:
    output:
        directory(f"{DATA}/{{dataset}}/raw"),
    wildcard_constraints:
        dataset=dataset_except(["synthetic"]),
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
        dataset=dataset_except(["synthetic", *tgb_datasets()]),
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


# TGB's datasets: the convert also writes TGB's own evaluation negatives (from its pickles), so they
# are its declared output and rule tgb_negatives never replaces them with generated ones.
rule convert_tgb:
    input:
        convert_inputs,
    output:
        graph=f"{DATA}/{{dataset}}/graph.h5",
        negatives=f"{DATA}/{{dataset}}/tgb_negatives.h5",
    wildcard_constraints:
        dataset="|".join(tgb_datasets()),
    params:
        args=convert_args,
    log:
        "logs/{dataset}/convert.log",
    benchmark:
        "logs/{dataset}/convert.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl convert {params.args} --out {output.graph:q} --negatives-out {output.negatives:q} > {log:q} 2>&1"


# Every other dataset: TGB's hist_rnd negatives for `train.eval: tgb` (config `tgb_negatives:`).
rule tgb_negatives:
    input:
        graph_path("{dataset}"),
    output:
        f"{DATA}/{{dataset}}/tgb_negatives.h5",
    wildcard_constraints:
        dataset=dataset_except(tgb_datasets()),
    params:
        args=tgb_negatives_args(),
    log:
        "logs/{dataset}/tgb_negatives.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl tgb-negatives {input:q} --out {output:q} {params.args} > {log:q} 2>&1"
