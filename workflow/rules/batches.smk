# Mini-batch cache: one HDF5 file per (dataset, batch parameters, i), so several i values coexist.
# The file name holds every parameter of the content (disttgl.workflow_config.CACHE_NAME), and the
# command takes them from the name's wildcards, so a cache always holds what its name says.


rule batches:
    input:
        f"{DATA}/{{dataset}}/graph.h5",
    output:
        f"{DATA}/{{dataset}}/batches/{CACHE_NAME}.h5",
    wildcard_constraints:
        batch_size=r"\d+",
        i=r"\d+",
        neighbors=r"\d+",
        strategy="recent|uniform",
        seed=r"\d+",
        neg_sets=r"\d+",
        eval_negatives=r"\d+",
        tgl_compat="0|1",
    params:
        compat=lambda w: "--tgl-compat" if w.tgl_compat == "1" else "",
    log:
        f"logs/{{dataset}}/batches-{CACHE_NAME}.log",
    benchmark:
        f"logs/{{dataset}}/batches-{CACHE_NAME}.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl batches {input:q} --out {output:q} --batch-size {wildcards.batch_size}"
        " --minibatch-parallelism {wildcards.i} --neg-sets {wildcards.neg_sets}"
        " --eval-negatives {wildcards.eval_negatives} --neighbors {wildcards.neighbors}"
        " --strategy {wildcards.strategy} --seed {wildcards.seed} {params.compat} > {log:q} 2>&1"
