# Snapshot DGNNs (config `snapshot_runs:`, docs/design.md §11): the graph cut into snapshots
# (data/{dataset}/snapshots/T{T}-L{L}[-sym].h5), then GCN + LSTM or TM-GCN trained on them,
# results/{dataset}/{NAME}/summary.json (+ metrics.jsonl, checkpoint.pt). As for rule train only
# summary.json is declared, so a killed job's checkpoint stays and the rerun's --resume continues it.
# The path and flag functions are in common_systems.smk (included from common.smk).


rule snapshots:
    input:
        graph_path("{dataset}"),
    output:
        f"{DATA}/{{dataset}}/snapshots/{{cut}}.h5",
    wildcard_constraints:
        cut=SNAPSHOT_CUT,
    params:
        cut=snapshot_cut_args,
    log:
        "logs/{dataset}/snapshots-{cut}.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl snapshots {input:q} {params.cut} --out {output:q} > {log:q} 2>&1"


rule snapshot_train:
    input:
        snapshots=snapshot_run_file,
        graph=graph_path("{dataset}"),
    output:
        f"{RESULTS}/{{dataset}}/{{srun}}/summary.json",
    wildcard_constraints:
        srun=snapshot_run_names(),
    params:
        out=run_dir,
        launch=snapshot_launch,
        args=snapshot_train_args,
        threads=snapshot_rank_threads,
    threads: snapshot_threads
    resources:
        timed_run=timed_run,
        **slurm_resources(snapshot_nodes, snapshot_procs, snapshot_threads),
    log:
        "logs/{dataset}/snapshot-train-{srun}.log",
    benchmark:
        "logs/{dataset}/snapshot-train-{srun}.benchmark.tsv"
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl {params.launch} {input.snapshots:q} {input.graph:q} --out {params.out:q} {params.args}"
        " --threads {params.threads} --resume > {log:q} 2>&1"
