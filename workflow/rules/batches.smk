# Mini-batch cache: one HDF5 file per (dataset, batch parameters, i), so several i values coexist.


def batch_cache_path(dataset, i):
    """The cache that training with minibatch parallelism ``i`` reads (keyed by every parameter)."""
    b = config["batches"]
    return (f"{config['data_dir']}/{dataset}/batches/"
            f"b{b['batch_size']}-i{i}-n{b['neighbors']}-{b['strategy']}-s{b['seed']}.h5")


rule batches:
    input:
        f"{config['data_dir']}/{{dataset}}/graph.h5",
    output:
        f"{config['data_dir']}/{{dataset}}/batches/"
        "b{batch_size}-i{i}-n{neighbors}-{strategy}-s{seed}.h5",
    wildcard_constraints:
        batch_size=r"\d+",
        i=r"\d+",
        neighbors=r"\d+",
        strategy="recent|uniform",
        seed=r"\d+",
    params:
        neg_sets=config["batches"]["neg_sets"],
        eval_negatives=config["batches"]["eval_negatives"],
        compat="--tgl-compat" if config["batches"].get("tgl_compat", False) else "",
    log:
        "logs/{dataset}/batches-b{batch_size}-i{i}-n{neighbors}-{strategy}-s{seed}.log",
    benchmark:
        "logs/{dataset}/batches-b{batch_size}-i{i}-n{neighbors}-{strategy}-s{seed}.benchmark.tsv"
    shell:
        "disttgl batches {input} --out {output} --batch-size {wildcards.batch_size}"
        " --minibatch-parallelism {wildcards.i} --neg-sets {params.neg_sets}"
        " --eval-negatives {params.eval_negatives} --neighbors {wildcards.neighbors}"
        " --strategy {wildcards.strategy} --seed {wildcards.seed} {params.compat} > {log} 2>&1"
