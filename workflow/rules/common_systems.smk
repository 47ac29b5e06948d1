# The input/params functions of the rules of the other systems, snapshot DGNNs (snapshot.smk) and
# RandomTMA/SuperTMA (tma.smk); included from common.smk, whose conventions hold here (quoting,
# schema defaults read directly). Functions only: the rule files hold the rules.

# --------------------------------------------------------------------------- snapshot DGNNs (snapshot.smk)
# A snapshots file per dataset and cut (T snapshots, edge life L, symmetric or not), shared by every
# snapshot run with that cut: data/{dataset}/snapshots/T{T}-L{L}[-sym].h5.

SNAPSHOT_CUT = r"T(\d+)-L(\d+)(-sym)?"


def snapshot_run_names():
    """snapshot_train's run wildcard: the configured names (none: a pattern that matches nothing)."""
    names = config["snapshot_runs"]
    return "|".join(map(re.escape, names)) if names else "(?!)"


def snapshot_run(wildcards):
    return config["snapshot_runs"][wildcards.srun]


def snapshots_path(dataset, spec):
    """The snapshots file of a run's cut (`spec`: its config entry)."""
    cut = f"T{spec['num_snapshots']}-L{spec['edge_life']}" + ("-sym" if spec["symmetric"] else "")
    return f"{DATA}/{dataset}/snapshots/{cut}.h5"


def snapshot_run_file(wildcards):
    return snapshots_path(wildcards.dataset, snapshot_run(wildcards))


def snapshot_cut_args(wildcards):
    """snapshots: the cut's flags, read back from its file name."""
    t, life, sym = re.fullmatch(SNAPSHOT_CUT, wildcards.cut).groups()
    return shlex.join(["--num-snapshots", t, "--edge-life", life, *(["--symmetric"] if sym else [])])


def snapshot_nodes(wildcards):
    return snapshot_run(wildcards)["nodes"]


def snapshot_procs(wildcards):
    """Ranks per machine of a snapshot run."""
    return snapshot_run(wildcards)["procs"]


def snapshot_distributed(wildcards):
    """Whether the run has more than one rank (nodes x procs)."""
    return snapshot_nodes(wildcards) * snapshot_procs(wildcards) > 1


def snapshot_launch(wildcards):
    """snapshot_train: the disttgl command: `snapshot-train` in one process, else `disttgl launch` of
    nodes x procs ranks (one torchrun per node: srun under SLURM) running `snapshot-train --parallel`."""
    if not snapshot_distributed(wildcards):
        return "snapshot-train"
    return (f"launch --nodes {snapshot_nodes(wildcards)} --nproc-per-node {snapshot_procs(wildcards)}"
            " --program snapshot-train --")


def snapshot_train_args(wildcards):
    """snapshot_train: the run's flags (quoted), `--parallel` for several ranks."""
    r, t = snapshot_run(wildcards), config["train"]
    args = ["--model", r["model"], "--transfer", r["transfer"], "--epochs", r["epochs"], "--hidden", r["hidden"],
            "--lr", r["lr"], "--node-features", r["node_features"], "--device", t["device"], "--seed", t["seed"]]
    if snapshot_distributed(wildcards):
        args.append("--parallel")
    return shlex.join(map(str, args))


def snapshot_threads(wildcards):
    """Cores of a snapshot run on each machine: train.threads for one process, procs x
    parallel.threads_per_rank else."""
    if not snapshot_distributed(wildcards):
        return config["train"]["threads"]
    return snapshot_procs(wildcards) * config["parallel"]["threads_per_rank"]


def snapshot_rank_threads(wildcards, threads):
    """--threads of each rank (one process: all the job's cores)."""
    return config["parallel"]["threads_per_rank"] if snapshot_distributed(wildcards) else threads


# --------------------------------------------------------------------------- RandomTMA / SuperTMA (tma.smk)
# A partition per dataset and setting, shared by every TMA run with that setting:
# data/{dataset}/parts/{method}-{rule}-P{parts}[-C{clusters}]-s{seed}/partition.json, the part stores
# beside it (and the batch caches `disttgl tma` builds there).

PARTITION = r"(random|super)-(induced|incident)-P(\d+)(?:-C(\d+))?-s(\d+)"


def tma_run_names():
    """tma's run wildcard: the configured names (none: a pattern that matches nothing)."""
    names = config["tma_runs"]
    return "|".join(map(re.escape, names)) if names else "(?!)"


def tma_run(wildcards):
    return config["tma_runs"][wildcards.trun]


def partition_name(spec):
    """The partition directory of a TMA run (`spec`: its config entry)."""
    clusters = f"-C{spec['clusters']}" if spec.get("clusters") is not None else ""
    return f"{spec['method']}-{spec['rule']}-P{spec['parts']}{clusters}-s{spec['seed']}"


def tma_partition_file(wildcards):
    return f"{DATA}/{wildcards.dataset}/parts/{partition_name(tma_run(wildcards))}/partition.json"


def partition_dir(wildcards, output):
    """partition: the directory of the declared partition.json."""
    return os.path.dirname(output[0])


def partition_args(wildcards):
    """partition: the setting's flags, read back from its directory name."""
    method, rule, parts, clusters, seed = re.fullmatch(PARTITION, wildcards.part).groups()
    args = ["--method", method, "--rule", rule, "--parts", parts, *(["--clusters", clusters] if clusters else [])]
    return shlex.join([*args, "--seed", seed])


def tma_parts_dir(wildcards, input):
    return os.path.dirname(input.partition)


def tma_args(wildcards, input):
    """tma: the run's period, budget, rounds, evaluation period and failure settings, the batches of the
    caches it builds, the static memory, device and seed (quoted)."""
    r, b, t = tma_run(wildcards), config["batches"], config["train"]
    args = ["--sync-every", r["sync_every"], "--time-limit", r["time_limit"], "--rounds", r["rounds"],
            "--eval-every", r["eval_every"], "--batch-size", b["batch_size"], "--neg-sets", b["neg_sets"]]
    if r["drop_parts"]:
        args += ["--drop-parts", ",".join(map(str, sorted(set(r["drop_parts"]))))]
    if r["restart_dead"]:
        args += ["--restart-dead", "--max-restarts", r["max_restarts"]]
    if input.static:
        args += ["--static", input.static[0], "--static-dropout", config["model"]["static_dropout"]]
    return shlex.join(map(str, [*args, "--device", t["device"], "--seed", t["seed"]]))


def tma_static(wildcards):
    """tma: the whole graph's static memory when the run has `static_memory: true`."""
    return [static_memory_path(wildcards.dataset)] if tma_run(wildcards)["static_memory"] else []


def tma_trainers(wildcards):
    """Trainers of a TMA run: one per part not dropped."""
    r = tma_run(wildcards)
    return r["parts"] - len(set(r["drop_parts"]))


def tma_threads(wildcards):
    """Cores of a TMA run: one trainer per part, parallel.threads_per_rank each."""
    return tma_trainers(wildcards) * config["parallel"]["threads_per_rank"]


def tma_slurm_resources():
    """tma's resources for the SLURM executor (ignored by local runs): a task per trainer, which
    `disttgl tma` starts as a job step of its own (docs/design.md §14.6). `mpi` is set (empty) so the
    job-step executor runs the command as it is, not inside one `srun -n 1`."""
    return dict(tasks=tma_trainers, cpus_per_task=config["parallel"]["threads_per_rank"], mpi="")
