"""The Snakemake workflow: config validation before any job, the data stage end to end, the schema's
defaults against disttgl's own, `snakemake --lint`. Runs use the test configuration
.test/config.yaml (seconds, not minutes); tests marked slow run Snakemake jobs to completion."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from disttgl.cli import COMMANDS
from disttgl.errors import DataError
from disttgl.workflow_config import (CACHE_NAME, batch_cache_name, check_config, convert_arguments_for,
                                     record_lock_owner, remove_stale_locks, timed_run_units)

REPO = Path(__file__).resolve().parents[1]


# The workflow's test configuration (complete, so layering it over config.yaml leaves nothing of the
# full-size run in); a test that changes a value edits the working copy's file (_test_config).
TEST_CONFIG = ".test/config.yaml"


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow (not the package) so runs never touch the checkout's data/ or results/."""
    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copy(REPO / "config.yaml", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")  # the workflow profile Snakemake loads by default
    shutil.copytree(REPO / ".test", tmp_path / ".test")
    return tmp_path


def snakemake(workdir: Path, *args: str, timeout: int = 600,
              configfile: str | None = TEST_CONFIG) -> subprocess.CompletedProcess:
    """`snakemake ARGS --configfile .test/config.yaml` in the copy (configfile=None: config.yaml alone).
    --configfile goes last: it takes several files, and would take a target after it for one."""
    cmd = ["snakemake", *args, *(["--configfile", configfile] if configfile else [])]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def _test_config(workdir: Path, **changes) -> dict:
    """The working copy's .test/config.yaml with CHANGES ({"dotted.key": value}) written back."""
    path = workdir / TEST_CONFIG
    config = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        _edit(config, key, value)
    path.write_text(yaml.safe_dump(config))
    return config


def test_dry_run_lists_data_jobs(workdir):
    proc = snakemake(workdir, "-n", "data/synthetic/graph.h5")
    assert proc.returncode == 0, proc.stderr
    assert "synth" in proc.stdout


def test_dry_run_lists_fetch_and_convert_for_a_registry_dataset(workdir):
    proc = snakemake(workdir, "-n", "data/WIKI/graph.h5", "--config", "datasets=[WIKI]")
    assert proc.returncode == 0, proc.stderr
    assert "fetch" in proc.stdout and "convert" in proc.stdout


@pytest.mark.slow
def test_data_stage_builds_the_synthetic_store(workdir):
    proc = snakemake(workdir, "--cores", "2", "data/synthetic/graph.h5")
    assert proc.returncode == 0, proc.stderr
    from disttgl.data.graph_store import graph_info

    info = graph_info(workdir / "data" / "synthetic" / "graph.h5")
    config = yaml.safe_load((REPO / TEST_CONFIG).read_text())
    assert info["num_events"] == config["synthetic"]["events"]
    assert (workdir / "logs" / "synthetic" / "synth.log").exists()


def _edit(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


@pytest.mark.parametrize("path, value, key, message", [
    ("synthetic.events", "many", "['synthetic']['events']", "is not of type 'integer'"),
    ("batches.batch_size", 0, "['batches']['batch_size']", "less than the minimum"),
    ("model.loss", "hinge", "['model']['loss']", "is not one of"),
    ("model.static_dropout", 1.0, "['model']['static_dropout']", "greater than or equal to the maximum"),
    ("bogus", 1, "bogus", "Additional properties are not allowed"),
    ("parallel.configs", ["2x2"], "['parallel']['configs']", "is not valid under any of the given schemas"),
    ("datasets", ["synthetic", "nosuch"], "datasets[1]", "unknown dataset 'nosuch'"),
    ("custom_datasets", {"..": {"files": ["a.csv"], "format": "snap"}}, "custom_datasets..", "name '..' must"),
    ("runs", {".hidden": {}}, "runs..hidden", "name '.hidden' must"),
    ("parallel.configs", ["2x1x1", "3x1x1"], "parallel.configs[1]",
     "3 trainers on parallel.nodes = 1 machine(s) need 3 per machine, but parallel.procs_per_node = 2"),
    ("snapshot_runs", {"x": {"model": "gcn"}}, "['snapshot_runs']['x']['model']", "is not one of"),
    ("snapshot_runs", {"x": {"num_snapshots": 1}}, "['snapshot_runs']['x']['num_snapshots']", "less than the minimum"),
    ("snapshot_runs", {"static": {}}, "snapshot_runs.static", "is a run of `runs` too"),
    ("snapshot_runs", {"..": {}}, "snapshot_runs...", "name '..' must"),
    ("runs", {"s": {"staleness": 2, "pipeline": "streams"}}, "runs.s.pipeline", "it needs train.device = cuda"),
])
def test_bad_config_fails_before_any_job_naming_the_key(workdir, path, value, key, message):
    _test_config(workdir, **{path: value})
    proc = snakemake(workdir, "--cores", "1")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert key in out and message in out
    assert not (workdir / "data").exists()


@pytest.mark.slow
def test_custom_dataset_through_the_workflow(workdir):
    events = workdir / "mylog.csv"
    events.write_text("when,who,what\n" + "".join(f"{i}.0,u{i % 7},i{i % 5}\n" for i in range(60)))
    _test_config(workdir, datasets=["mylog"], custom_datasets={"mylog": {
        "files": [str(events)], "format": "csv", "bipartite": True, "src_col": "who", "dst_col": "what",
        "time_col": "when"}})
    proc = snakemake(workdir, "--cores", "1", "data/mylog/graph.h5")
    assert proc.returncode == 0, proc.stderr
    from disttgl.data.graph_store import graph_info

    info = graph_info(workdir / "data" / "mylog" / "graph.h5")
    assert info["num_events"] == 60 and info["num_nodes"] == 12 and info["bipartite"]


def test_check_config_and_convert_arguments():
    check_config({"datasets": ["synthetic", "wikipedia", "mine"], "custom_datasets": {"mine": {
        "files": ["a.txt"], "format": "snap"}}})
    with pytest.raises(DataError, match=r"datasets\[1\]"):
        check_config({"datasets": ["synthetic", "nope"]})
    with pytest.raises(DataError, match="custom_datasets.x: the csv format needs time_col"):
        check_config({"datasets": ["x"], "custom_datasets": {"x": {"files": ["a"], "format": "csv"}}})
    args = convert_arguments_for({"custom_datasets": {"m": {"files": ["my file.csv"], "format": "csv",
                                  "bipartite": False, "time_col": "ts", "feature_cols": ["a", "b"]}}},
                                 "m", [])
    assert args == "'my file.csv' --format csv --no-bipartite --time-col ts --feature-cols a,b"


def _shell_commands(out: str) -> list[str]:
    cmds = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Shell command:")]
    return [c for c in cmds if c != "None"]  # rule all has none


NASTY_DATA, NASTY_RESULTS, NASTY_MIRROR = "d x;touch pwned;y", "r $(touch pwned2)", "m x;touch pwned3"


def test_shell_commands_quote_every_config_value(workdir):
    """Config strings (data_dir, results_dir, data_mirror, custom file paths) reach each command as one
    argument: no `touch` runs, a space splits nothing."""
    events = workdir / "my log;touch pwned4.csv"
    events.write_text("t;src;dst\n1;a;b\n")
    _test_config(workdir, datasets=["synthetic", "WIKI", "mylog"], data_dir=NASTY_DATA, results_dir=NASTY_RESULTS,
                 data_mirror=NASTY_MIRROR, custom_datasets={"mylog": {"files": [str(events)], "format": "csv",
                                                                      "time_col": "t", "separator": ";"}})
    proc = snakemake(workdir, "-n", "-p")
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert {"synth", "fetch", "convert", "batches", "pretrain", "train", "train_parallel", "report"} <= set(
        re.findall(r"^(?:local)?rule (\w+):", out, re.M))
    values = (NASTY_DATA, NASTY_RESULTS, NASTY_MIRROR, str(events))
    seen = set()
    for cmd in _shell_commands(out):
        args = shlex.split(cmd)
        assert args[0] in ("disttgl", "python"), cmd
        assert args[0] == "disttgl" and args[1] in COMMANDS, cmd  # every rule runs one `disttgl` command
        for arg in args:
            if "pwned" in arg:  # a word holding a config value holds all of it (the value or a path under it)
                value = next((v for v in values if arg == v or arg.startswith(v + "/")), None)
                assert value is not None, (arg, cmd)
                seen.add(value)
        assert not {"touch", "y/synthetic/graph.h5", "x"} & set(args), cmd
    assert seen == set(values)
    assert not list(workdir.glob("pwned*"))


@pytest.mark.slow
def test_data_stage_in_directories_with_spaces_and_semicolons(workdir):
    events = workdir / "my events;touch pwned.csv"
    events.write_text("when,who,what\n" + "".join(f"{i}.0,u{i % 7},i{i % 5}\n" for i in range(60)))
    _test_config(workdir, **{
        "datasets": ["synthetic", "mylog"], "data_dir": "my data;touch pwned", "synthetic.events": 500,
        "synthetic.nodes": 50, "custom_datasets": {"mylog": {
            "files": [str(events)], "format": "csv", "bipartite": True, "src_col": "who", "dst_col": "what",
            "time_col": "when"}}})
    data = workdir / "my data;touch pwned"
    proc = snakemake(workdir, "--cores", "1", f"{data.name}/synthetic/graph.h5", f"{data.name}/mylog/graph.h5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from disttgl.data.graph_store import graph_info

    assert graph_info(data / "synthetic" / "graph.h5")["num_events"] == 500
    assert graph_info(data / "mylog" / "graph.h5")["num_events"] == 60
    assert not (workdir / "pwned").exists()


def test_batch_cache_name_holds_every_batch_parameter():
    from disttgl.cache.format import BatchParams

    fields = {f.name for f in dataclasses.fields(BatchParams)} - {"minibatch_parallelism"}
    assert set(re.findall(r"{(\w+)}", CACHE_NAME)) == fields | {"i"}
    base = {"batch_size": 600, "neg_sets": 32, "eval_negatives": 49, "neighbors": 10, "strategy": "recent",
            "seed": 0, "tgl_compat": False}
    other = {"batch_size": 300, "neg_sets": 8, "eval_negatives": 9, "neighbors": 5, "strategy": "uniform",
             "seed": 1, "tgl_compat": True}
    name = batch_cache_name(base, 1)
    assert batch_cache_name({}, 1) == name  # the schema's defaults
    assert batch_cache_name(base, 2) != name
    for key in fields:
        assert batch_cache_name({**base, key: other[key]}, 1) != name, key


def test_changing_neg_sets_builds_a_new_cache(workdir):
    paths = []
    for neg_sets in (32, 8):
        _test_config(workdir, **{"batches.neg_sets": neg_sets})
        proc = snakemake(workdir, "-n", "-p", "results/synthetic/nostatic/summary.json")
        assert proc.returncode == 0, proc.stderr
        batches = [c for c in _shell_commands(proc.stdout + proc.stderr) if c.startswith("disttgl batches")]
        assert len(batches) == 1 and f"--neg-sets {neg_sets} " in batches[0]
        paths.append(shlex.split(batches[0])[shlex.split(batches[0]).index("--out") + 1])
    assert paths[0] != paths[1]


def test_eval_tgb_makes_negatives_and_passes_them_to_every_training_job(workdir):
    """`train.eval: tgb`: rule tgb_negatives (hist_rnd) for the synthetic set, `--eval tgb` with that file
    in every train and train_parallel command; TGB's own datasets take their negatives from convert."""
    _test_config(workdir, **{"train.eval": "tgb", "tgb_negatives.num_neg": 50})
    proc = snakemake(workdir, "-n", "-p")
    assert proc.returncode == 0, proc.stderr
    cmds = _shell_commands(proc.stdout + proc.stderr)
    (neg,) = [c for c in cmds if c.startswith("disttgl tgb-negatives")]
    assert "--out data/synthetic/tgb_negatives.h5" in neg and "--num-neg 50" in neg
    trains = [c for c in cmds if c.startswith(("disttgl train", "disttgl launch"))]
    assert trains and all("--eval tgb --tgb-negatives data/synthetic/tgb_negatives.h5 --tgb-batch-size 200" in c
                          for c in trains)
    proc = snakemake(workdir, "-n", "-p", "data/tgbl-wiki/tgb_negatives.h5", "--config", "datasets=[tgbl-wiki]")
    assert proc.returncode == 0, proc.stderr
    cmds = _shell_commands(proc.stdout + proc.stderr)
    assert not [c for c in cmds if c.startswith("disttgl tgb-negatives")]
    (conv,) = [c for c in cmds if c.startswith("disttgl convert")]
    assert "--format tgb" in conv and "--negatives-out data/tgbl-wiki/tgb_negatives.h5" in conv


def test_check_config_refuses_escaping_names_and_unlaunchable_layouts():
    ok = {"datasets": ["synthetic"], "runs": {"a.b": {}}, "parallel": {"configs": ["1x1x1", "2x1x1", "1x1x2"],
                                                                       "nodes": 1, "procs_per_node": 2}}
    check_config(ok)
    for bad, key in (({"datasets": [".."]}, r"datasets\[0\]"), ({"datasets": ["."]}, r"datasets\[0\]"),
                     ({"custom_datasets": {".x": {"files": ["a"], "format": "snap"}}}, r"custom_datasets\.\.x"),
                     ({"runs": {"..": {}}}, r"runs\.\.\."), ({"data_dir": "d{x}"}, "data_dir")):
        with pytest.raises(DataError, match=key):
            check_config({**ok, **bad})
    par = ok["parallel"]
    with pytest.raises(DataError, match=r"parallel.configs\[0\] = 3x1x1: 3 trainers .* need 3 per machine, "
                                        r"but parallel.procs_per_node = 2"):
        check_config({**ok, "parallel": {**par, "configs": ["3x1x1"]}})
    with pytest.raises(DataError, match=r"parallel.configs\[1\] = 2x1x1: parallel.nodes = 2 must divide k = 1"):
        check_config({**ok, "parallel": {**par, "configs": ["1x1x2", "2x1x1"], "nodes": 2}})
    check_config({**ok, "parallel": {**par, "configs": ["2x1x2"], "nodes": 2}})  # 2 machines x 2
    check_config({**ok, "parallel": {**par, "configs": ["4x1x1"], "procs_per_node": None}})  # room unknown
    with pytest.raises(DataError, match="parallel.gpus_per_node = 1"):
        check_config({**ok, "parallel": {**par, "configs": ["2x1x1"], "procs_per_node": None, "gpus_per_node": 1}})
    check_config({**ok, "parallel": {**par, "configs": "auto"}})


def test_timed_runs_take_the_timed_run_resource(workdir):
    proc = snakemake(workdir, "-n", configfile=None)  # the shipped config.yaml: three layouts, two caches
    assert proc.returncode == 0, proc.stderr
    blocks = re.split(r"^\[.*\]$", proc.stdout, flags=re.M)  # a job's block starts with its timestamp
    jobs = [(m.group(1), b) for b in blocks if (m := re.search(r"^(?:local)?rule (\w+):", b, re.M))]
    assert {rule for rule, _ in jobs} >= {"synth", "batches", "train", "train_parallel", "pretrain", "report"}
    timed = {rule for rule, body in jobs if re.search(r"^\s+resources: .*\btimed_run=1\b", body, re.M)}
    assert timed == {"train", "train_parallel", "pretrain"}
    # under a cluster executor (SLURM) each job has its own CPUs: the limit must not serialise them
    assert timed_run_units(type("W", (), {"local_exec": False})()) == 0
    assert timed_run_units(type("W", (), {"local_exec": True})()) == 1


TIMED_RULES = ("train", "train_parallel", "pretrain", "snapshot_train", "profile")


def _timed_overlaps(out: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Timed jobs started, and the pairs of timed jobs that ran at the same time, from Snakemake's log."""
    running, started, overlaps = {}, [], []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:.*\n)*?\s+jobid: (\d+)|^Finished jobid: (\d+)", out, re.M):
        rule, jobid, done = m.groups()
        if done:
            running.pop(done, None)
        elif rule in TIMED_RULES:
            overlaps += [(other, rule) for other in running.values()]
            running[jobid] = rule
            started.append(rule)
    return started, overlaps


@pytest.mark.slow
def test_training_jobs_never_run_side_by_side(workdir):
    """With cores to spare (2 cores, 1 thread each) Snakemake would start pretrain and a training run
    together; the timed_run resource keeps them one at a time so each measures an idle machine.
    The finished run then makes the HTML report from the default target."""
    config = _test_config(workdir, **{"train.threads": 1, "parallel.configs": []})
    proc = snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    started, overlaps = _timed_overlaps(proc.stdout + proc.stderr)
    # the runs (static, nostatic, stale: MSPipe, whose profile of stage times is timed too) and snapshot runs
    want = sorted(["pretrain", "profile"] + ["snapshot_train"] * len(config["snapshot_runs"])
                  + ["train"] * len(config["runs"]))
    assert sorted(started) == want and overlaps == []
    assert (workdir / "results" / "report" / "accuracy.csv").exists()
    proc = snakemake(workdir, "--report", "report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    assert "accuracy.html" in html and "static_ablation.svg" in html


# ----------------------------------------------------------------------------- snapshot DGNNs

SNAPSHOT_RUNS = {
    "gl": {"num_snapshots": 20, "edge_life": 3, "epochs": 2, "hidden": 8},
    "tm": {"model": "tmgcn", "num_snapshots": 20, "edge_life": 3, "epochs": 2, "hidden": 8},  # gl's cut
    "tm2": {"model": "tmgcn", "transfer": "whole", "procs": 2, "num_snapshots": 20, "edge_life": 3,
            "symmetric": True, "epochs": 2, "hidden": 8, "node_features": "embedding", "lr": 0.02},
    "two_nodes": {"nodes": 2, "procs": 2, "num_snapshots": 20, "edge_life": 3, "epochs": 2, "hidden": 8},
}


def test_snapshot_runs_plan_one_cut_per_setting_and_a_training_job_each(workdir):
    _test_config(workdir, snapshot_runs=SNAPSHOT_RUNS, **{"parallel.configs": [], "train.threads": 2})
    proc = snakemake(workdir, "-n", "-p", "--cores", "2")
    assert proc.returncode == 0, proc.stderr
    cmds = _shell_commands(proc.stdout)
    cuts = sorted(c for c in cmds if c.startswith("disttgl snapshots "))
    assert cuts == [  # gl and tm share theirs
        "disttgl snapshots data/synthetic/graph.h5 --num-snapshots 20 --edge-life 3 --out "
        "data/synthetic/snapshots/T20-L3.h5 > logs/synthetic/snapshots-T20-L3.log 2>&1",
        "disttgl snapshots data/synthetic/graph.h5 --num-snapshots 20 --edge-life 3 --symmetric --out "
        "data/synthetic/snapshots/T20-L3-sym.h5 > logs/synthetic/snapshots-T20-L3-sym.log 2>&1"]
    trains = {shlex.split(c)[shlex.split(c).index("--out") + 1]: c for c in cmds
              if "snapshot-train" in c}
    assert set(trains) == {f"results/synthetic/{r}" for r in SNAPSHOT_RUNS}
    flags = "--transfer diff --epochs 2 --hidden 8 --lr 0.01 --node-features auto --device cpu --seed 0"
    assert trains["results/synthetic/gl"] == (
        "disttgl snapshot-train data/synthetic/snapshots/T20-L3.h5 data/synthetic/graph.h5 --out "
        f"results/synthetic/gl --model gcn-lstm {flags} --threads 2 --resume "
        "> logs/synthetic/snapshot-train-gl.log 2>&1")
    assert f"--model tmgcn {flags} --threads 2 --resume" in trains["results/synthetic/tm"]
    assert trains["results/synthetic/tm2"].startswith(
        "disttgl launch --nodes 1 --nproc-per-node 2 --program snapshot-train -- "
        "data/synthetic/snapshots/T20-L3-sym.h5 data/synthetic/graph.h5 --out results/synthetic/tm2 --model tmgcn "
        "--transfer whole --epochs 2 --hidden 8 --lr 0.02 --node-features embedding --device cpu --seed 0 "
        "--parallel --threads 1 --resume")
    # two machines (SLURM): one torchrun per node through srun, 2 ranks each, 4 in all
    assert trains["results/synthetic/two_nodes"].startswith(
        "disttgl launch --nodes 2 --nproc-per-node 2 --program snapshot-train -- data/synthetic/snapshots/T20-L3.h5")
    assert "--parallel --threads 1 --resume" in trains["results/synthetic/two_nodes"]
    blocks = re.split(r"^\[.*\]$", proc.stdout, flags=re.M)
    (two,) = [b for b in blocks if "results/synthetic/two_nodes/summary.json" in b and "snapshot_train" in b]
    res = re.search(r"^\s+resources: (.*)$", two, re.M).group(1)
    assert all(k in res for k in ("nodes=2", "tasks=2", "mpi=srun", "cpus_per_task=2")), res
    (one,) = [b for b in blocks if "results/synthetic/gl/summary.json" in b and "snapshot_train" in b]
    assert "nodes=1" in re.search(r"^\s+resources: (.*)$", one, re.M).group(1)
    (report,) = [c for c in cmds if c.startswith("disttgl report")]
    assert all(f"synthetic/{r}" in shlex.split(report) for r in SNAPSHOT_RUNS)  # expected, and read
    assert all(f"results/synthetic/{r}" in shlex.split(report) for r in SNAPSHOT_RUNS)


def test_snapshot_run_defaults_are_the_cli_defaults():
    from disttgl.snapshot.build import SnapshotParams
    from disttgl.snapshot.train import SnapshotTrainConfig

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["snapshot_runs"]["additionalProperties"]["properties"]
    train, cut = _dataclass_defaults(SnapshotTrainConfig), _dataclass_defaults(SnapshotParams)
    own = {"num_snapshots": "SnapshotParams has none (it takes --delta or --num-snapshots)",
           "procs": "ranks of the launch on each machine", "nodes": "machines of the launch"}
    assert set(props) == {"model", "transfer", "epochs", "hidden", "lr", "node_features", "edge_life", "symmetric"} \
        | set(own)
    for key, sub in props.items():
        if key not in own:
            assert sub["default"] == {**train, **cut}[key], key


@pytest.mark.slow
def test_snapshot_runs_train_and_reach_the_report(workdir):
    runs = {"gl": SNAPSHOT_RUNS["gl"], "tm2": SNAPSHOT_RUNS["tm2"]}
    _test_config(workdir, snapshot_runs=runs, **{"parallel.configs": [], "synthetic.events": 1500,
                                                  "synthetic.nodes": 40})
    targets = [f"results/synthetic/{r}/summary.json" for r in runs]
    proc = snakemake(workdir, "--cores", "2", *targets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    gl, tm2 = (json.loads((workdir / t).read_text()) for t in targets)
    assert gl["model"] == "gcn-lstm" and gl["epochs"] == 2 and "parallel" not in gl and gl["edge_life"] == 3
    assert tm2["model"] == "tmgcn" and tm2["transfer"] == "whole" and tm2["parallel"]["world"] == 2
    assert (workdir / "logs" / "synthetic" / "snapshot-train-tm2.log").stat().st_size > 0
    assert (workdir / "results" / "synthetic" / "gl" / "checkpoint.pt").exists()
    again = snakemake(workdir, "--cores", "2", *targets)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


# ----------------------------------------------------------------------------- RandomTMA / SuperTMA

TMA_RUNS = {
    "rtma": {"method": "random", "parts": 3, "sync_every": "20steps", "time_limit": "90s"},
    "stma": {"method": "super", "rule": "incident", "parts": 3, "clusters": 12, "seed": 2},
    "stma2": {"method": "super", "rule": "incident", "parts": 3, "clusters": 12, "seed": 2, "time_limit": "2min"},
    "fail": {"method": "random", "parts": 3, "sync_every": "10steps", "rounds": 12, "eval_every": 4,
             "drop_parts": [2], "restart_dead": True, "max_restarts": 1, "static_memory": True},
}


def test_tma_runs_plan_one_partition_per_setting_and_a_tma_job_each(workdir):
    from disttgl.cli import _parser

    _test_config(workdir, tma_runs=TMA_RUNS, **{"parallel.configs": [], "parallel.threads_per_rank": 2})
    proc = snakemake(workdir, "-n", "-p", "--cores", "6")
    assert proc.returncode == 0, proc.stderr
    cmds = _shell_commands(proc.stdout)
    parts = sorted(c for c in cmds if c.startswith("disttgl partition "))
    assert parts == [  # stma and stma2 share theirs, rtma and fail too
        "disttgl partition data/synthetic/graph.h5 --method random --rule induced --parts 3 --seed 0 --out "
        "data/synthetic/parts/random-induced-P3-s0 > logs/synthetic/partition-random-induced-P3-s0.log 2>&1",
        "disttgl partition data/synthetic/graph.h5 --method super --rule incident --parts 3 --clusters 12 --seed 2 "
        "--out data/synthetic/parts/super-incident-P3-C12-s2 > logs/synthetic/partition-super-incident-P3-C12-s2.log"
        " 2>&1"]
    tmas = {shlex.split(c)[shlex.split(c).index("--out") + 1]: c for c in cmds if c.startswith("disttgl tma ")}
    assert set(tmas) == {f"results/synthetic/{r}" for r in TMA_RUNS}
    batches = "--batch-size 100 --neg-sets 32"
    common = "--device cpu --seed 0 --dim 16 --heads 2 --dropout 0.2 --threads 2"
    assert tmas["results/synthetic/rtma"] == (
        "disttgl tma data/synthetic/parts/random-induced-P3-s0 --graph data/synthetic/graph.h5 --out "
        f"results/synthetic/rtma --sync-every 20steps --time-limit 90s --rounds 0 --eval-every 1 {batches} {common}"
        " > logs/synthetic/tma-rtma.log 2>&1")
    assert tmas["results/synthetic/stma"].startswith(  # the schema's defaults: 60s, 30min, no round limit
        "disttgl tma data/synthetic/parts/super-incident-P3-C12-s2 --graph data/synthetic/graph.h5 --out "
        f"results/synthetic/stma --sync-every 60s --time-limit 30min --rounds 0 --eval-every 1 {batches} {common} >")
    assert tmas["results/synthetic/fail"] == (  # the failure settings, and the whole graph's static memory
        "disttgl tma data/synthetic/parts/random-induced-P3-s0 --graph data/synthetic/graph.h5 --out "
        f"results/synthetic/fail --sync-every 10steps --time-limit 30min --rounds 12 --eval-every 4 {batches} "
        "--drop-parts 2 --restart-dead --max-restarts 1 --static data/synthetic/static_memory.h5 --static-dropout "
        f"0.8 {common} > logs/synthetic/tma-fail.log 2>&1")
    assert any(c.startswith("disttgl pretrain ") for c in cmds)  # the static memory the fail run reads
    assert "--time-limit 2min" in tmas["results/synthetic/stma2"]
    for cmd in [*parts, *tmas.values()]:  # every flag is one the command takes
        argv = shlex.split(cmd.split(" > ")[0])[1:]
        _parser(argv[0]).parse_args(argv)
    # three trainers of 2 threads each (two where a part is dropped), timed like every training job
    blocks = re.split(r"^\[.*\]$", proc.stdout, flags=re.M)
    tma_jobs = [b for b in blocks if re.search(r"^(?:local)?rule tma:", b, re.M)]
    assert len(tma_jobs) == 4
    assert sorted(int(re.search(r"^\s+threads: (\d+)$", b, re.M).group(1)) for b in tma_jobs) == [4, 6, 6, 6]
    assert all(re.search(r"^\s+resources: .*\btimed_run=1\b", b, re.M) for b in tma_jobs)
    (report,) = [c for c in cmds if c.startswith("disttgl report")]
    assert all(f"synthetic/{r}" in shlex.split(report) and f"results/synthetic/{r}" in shlex.split(report)
               for r in TMA_RUNS)  # expected, and read


@pytest.mark.parametrize("runs, key, message", [
    ({"x": {"method": "metis", "parts": 2}}, "['tma_runs']['x']['method']", "is not one of"),
    ({"x": {"method": "random"}}, "['tma_runs']['x']", "'parts' is a required property"),
    ({"x": {"method": "random", "parts": 2, "sync_every": "often"}}, "['tma_runs']['x']['sync_every']",
     "does not match"),
    ({"x": {"method": "random", "parts": 2, "clusters": 8}}, "tma_runs.x.clusters", "method super only"),
    ({"static": {"method": "random", "parts": 2}}, "tma_runs.static", "is a run of `runs` too"),
    ({"2x1x1": {"method": "random", "parts": 2}}, "tma_runs", "does not match"),
    ({"x": {"method": "random", "parts": 2, "drop_parts": [2]}}, "tma_runs.x.drop_parts", "parts 0..1"),
    ({"x": {"method": "random", "parts": 2, "drop_parts": [0, 1]}}, "tma_runs.x.drop_parts", "at least one part"),
    ({"x": {"method": "random", "parts": 2, "restart_dead": "yes"}}, "['tma_runs']['x']['restart_dead']",
     "is not of type 'boolean'"),
])
def test_bad_tma_runs_fail_before_any_job(workdir, runs, key, message):
    _test_config(workdir, tma_runs=runs)
    proc = snakemake(workdir, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and key in out and message in out, out[-3000:]


def test_tma_and_snapshot_names_may_not_collide():
    with pytest.raises(DataError, match="tma_runs.gl: the name is a run of `snapshot_runs` too"):
        check_config({"datasets": ["synthetic"], "runs": {}, "snapshot_runs": {"gl": {}},
                      "tma_runs": {"gl": {"method": "random", "parts": 2}}})


# ----------------------------------------------------------------------------- one source of defaults

def _dataclass_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# Schema defaults that are no dataclass field's, and why (a new key must be put here or in FIELDS).
NOT_FIELDS = {
    "model.preset": "names a set of defaults (disttgl.train.config.PRESETS), not one",
    "train.threads": "the cores Snakemake gives a job; the CLI's default (None) leaves torch's own count",
    "parallel.configs": "which layouts the workflow runs", "parallel.nodes": "machines per run (launch)",
    "parallel.procs_per_node": "trainers per machine (launch)", "parallel.gpus_per_node": "the same, on GPUs",
    "parallel.static_memory": "whether a layout reads the pretrained table",
    "parallel.threads_per_rank": "the cores Snakemake gives a rank", "parallel.max_restarts": "torchrun's",
}


def test_schema_defaults_are_the_dataclasses_defaults():
    """A key left out of the config means what the CLI does without its flag: every default of the
    schema that is a disttgl setting equals the dataclass default it stands for."""
    from disttgl.cache.format import BatchParams
    from disttgl.train.config import PretrainConfig, TrainConfig

    train, pretrain, batch = (_dataclass_defaults(c) for c in (TrainConfig, PretrainConfig, BatchParams))
    fields = {**{f"model.{k}": train[k] for k in ("dim", "heads", "dropout", "static_dropout", "lr", "loss")},
              **{f"train.{k}": train[k] for k in ("epochs", "seed", "device", "eval", "tgb_batch_size")},
              "parallel.timeout": train["timeout"],
              "pretrain.epochs": pretrain["epochs"], "pretrain.patience": pretrain["patience"],
              **{f"batches.{k}": batch[k] for k in batch if k != "minibatch_parallelism"}}
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    defaults = {f"{section}.{key}": sub for section in ("model", "train", "pretrain", "parallel", "batches")
                for key, sub in schema["properties"][section]["properties"].items() if "default" in sub}
    assert set(defaults) == set(fields) | set(NOT_FIELDS), "classify each schema default: FIELDS or NOT_FIELDS"
    for key, want in fields.items():
        got = defaults[key]["default"]
        if key == "model.loss":
            # null passes no --loss, so that `preset` can set it; then the dataclass default applies,
            # which the key's description names
            assert got is None and f"(TrainConfig.loss, {want})" in defaults[key]["description"], key
            continue
        assert got == want and type(got) in (type(want), int), (key, got, want)


def test_left_out_keys_take_the_schema_defaults(workdir):
    """A config with only the required keys runs every stage with the schema's (= disttgl's) defaults:
    the rules read config[...] directly, with nothing of their own."""
    (workdir / "config.yaml").write_text(yaml.safe_dump({
        "datasets": ["synthetic"], "runs": {"s": {"static_memory": True}}, "parallel": {"configs": ["1x2x1"]}}))
    proc = snakemake(workdir, "-n", "-p", "--cores", "2", configfile=None)  # 2: threads are not capped
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cmds = {shlex.split(c)[1]: c for c in _shell_commands(proc.stdout)}
    assert set(cmds) == {"synth", "batches", "pretrain", "train", "launch", "report"}
    assert "--events 20000 --nodes 400 " in cmds["synth"]
    assert "--batch-size 600 --minibatch-parallelism 1 --neg-sets 32 --eval-negatives 49 --neighbors 10" \
        " --strategy recent --seed 0 " in cmds["batches"]
    model = "--dim 100 --heads 2 --dropout 0.2 --device cpu --seed 0"
    assert "--epochs 30 --patience 3 " + model + " --threads 2 " in cmds["pretrain"]
    assert "--static-dropout 0.8 --epochs 10 " + model + " --threads 2 " in cmds["train"]
    assert "--nodes 1 --nproc-per-node 2 --max-restarts 0 " in cmds["launch"]
    assert "--epochs 10 --timeout 300 " + model + " --threads 1 " in cmds["launch"]


def test_lint_reports_nothing(workdir):
    """`snakemake --lint` (also run by .ci/run): a log on every rule, functions only in common.smk,
    no hard-coded path prefixes in params, a software environment on every rule."""
    proc = snakemake(workdir, "--lint", configfile=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-5000:]
    assert "Congratulations, your workflow is in a good condition!" in out


# ----------------------------------------------------------------------------- stale locks, kill -9

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _locks(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / ".snakemake" / "locks"
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        (d / name).write_text("results/x\n")
    return d


def _fake_owner(lock_dir: Path, pid: int, **rec) -> None:
    import json

    path = record_lock_owner(lock_dir, pid=os.getpid())  # a real record, then made someone else's
    data = json.loads(path.read_text())
    data.update(pid=pid, pgid=rec.pop("pgid", pid), start=None, **rec)
    path.unlink()
    (lock_dir / f"disttgl-owner-{pid}.json").write_text(json.dumps(data))


def test_locks_of_a_dead_snakemake_are_removed(tmp_path):
    d = _locks(tmp_path, "0.input.lock", "0.output.lock")
    _fake_owner(d, _dead_pid())
    assert sorted(remove_stale_locks(d)) == ["0.input.lock", "0.output.lock"]
    assert list(d.iterdir()) == []


def test_locks_of_a_live_run_or_unknown_owner_stay(tmp_path):
    d = _locks(tmp_path, "0.input.lock", "0.output.lock")
    assert record_lock_owner(d) is not None  # this (live) process holds them
    assert remove_stale_locks(d) == [] and (d / "0.input.lock").exists()
    for f in d.glob("disttgl-owner-*"):
        f.unlink()
    assert remove_stale_locks(d) == []  # nobody recorded: Snakemake's LockException, as before
    _fake_owner(d, _dead_pid(), host="another-node")
    assert remove_stale_locks(d) == []  # another host's process: cannot tell
    # a lock file that changed since the dead owner recorded it is not the one it held
    d2 = _locks(tmp_path / "b", "0.input.lock")
    _fake_owner(d2, _dead_pid())
    time.sleep(0.01)
    (d2 / "0.input.lock").unlink()
    (d2 / "0.input.lock").write_text("results/y\n")
    assert remove_stale_locks(d2) == []


def test_locks_stay_while_jobs_of_a_killed_snakemake_still_run(tmp_path):
    """Snakemake killed alone (kill -9 PID): its jobs keep writing in its process group; not stale."""
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    orphan = int(leader.stdout.readline())
    leader.wait()  # the group leader (like snakemake) is gone, its job runs on
    try:
        d = _locks(tmp_path, "0.input.lock")
        _fake_owner(d, leader.pid)
        assert remove_stale_locks(d) == []
    finally:
        os.kill(orphan, signal.SIGKILL)
    time.sleep(0.2)
    assert remove_stale_locks(d) == ["0.input.lock"]


@pytest.mark.slow
def test_plain_rerun_after_kill_9_finishes(workdir):
    """kill -9 of snakemake and its jobs while the batch cache is written, then the README's command
    again: it must finish by itself (no IncompleteFilesException, no LockException, no `.part` left)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(["snakemake", "--cores", "1", "--configfile", TEST_CONFIG], cwd=workdir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    batches = workdir / "data" / "synthetic" / "batches"
    deadline = time.monotonic() + 300
    try:
        while not list(batches.glob(".*.part")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "snakemake ended before it wrote the batch cache"
        assert list(batches.glob(".*.part")), "no batch cache being written after 300 s"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # snakemake and every job it started (its process group)
        first.wait()
    assert list((workdir / ".snakemake" / "locks").glob("*.lock"))  # what kill -9 leaves
    proc = snakemake(workdir, "--cores", "all")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "removed stale Snakemake lock" in proc.stderr
    assert (workdir / "results" / "report" / "accuracy.html").exists()
    assert not list(workdir.rglob("*.part"))  # the killed writer's temporary went with the rerun


def test_optional_datasets_join_only_where_present(tmp_path):
    """optional_datasets: converted, fetched or mirrored ones join `datasets`; the others are left out."""
    from disttgl.data.registry import raw_paths
    from disttgl.errors import DataError
    from disttgl.workflow_config import check_config, present_datasets

    data = tmp_path / "data"
    (data / "MOOC").mkdir(parents=True)
    (data / "MOOC" / "graph.h5").write_bytes(b"")  # converted already
    for p in raw_paths("UCI", data / "UCI" / "raw"):  # fetched
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    mirror = tmp_path / "mirror"
    (mirror / "lastfm").mkdir(parents=True)
    (mirror / "lastfm" / "lastfm.csv").write_bytes(b"")  # in the mirror, in a folder named after an alias
    own = tmp_path / "own.csv"
    own.write_text("x")
    config = {"datasets": ["synthetic", "MOOC"], "data_dir": str(data), "data_mirror": str(mirror),
              "optional_datasets": ["WIKI", "MOOC", "UCI", "LASTFM", "REDDIT", "mine", "gone"],
              "custom_datasets": {"mine": {"files": [str(own)]}, "gone": {"files": [str(tmp_path / "no.csv")]}}}
    assert present_datasets(config) == ["UCI", "LASTFM", "mine"]
    assert "WIKI" in present_datasets({**config, "data_mirror": "https://example.org/tgn"})  # a URL: not checkable
    with pytest.raises(DataError, match="optional_datasets: unknown dataset 'nope'"):
        check_config({"datasets": ["synthetic"], "optional_datasets": ["nope"], "runs": {"a": {}}})


def test_mspipe_config_lays_out_its_grid_and_picks_up_a_converted_dataset(workdir):
    """workflow/configs/mspipe.yaml: TGN/JODIE/APAN runs with profile and similar jobs; an optional dataset
    joins once its graph store is there."""
    proc = snakemake(workdir, "-n", "-p", configfile="workflow/configs/mspipe.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for run in ("tgn", "tgn-auto", "tgn-k3", "tgn-k3-mitigated", "jodie", "jodie-auto", "apan", "apan-auto"):
        assert f"results/synthetic/{run}/summary.json" in out
    assert "--method jaccard" in out and "--memory rnn" in out
    for memory in ("gru", "rnn", "apan"):  # each model's own stage times set its k
        assert f"--out data/synthetic/stages-{memory}.json --memory {memory} " in out
        assert f"--staleness auto --stage-times data/synthetic/stages-{memory}.json" in out
    assert "--mitigation similar --similar data/synthetic/similar-jaccard.h5" in out
    assert "results/UCI/" not in out
    (workdir / "data" / "UCI").mkdir(parents=True)
    (workdir / "data" / "UCI" / "graph.h5").write_bytes(b"")
    proc = snakemake(workdir, "-n", configfile="workflow/configs/mspipe.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "results/UCI/tgn-auto/summary.json" in proc.stdout


def test_disttgl_config_lays_out_the_papers_experiments(workdir):
    """workflow/configs/disttgl.yaml: the batch-size sweep reads caches of its own batch sizes, the
    static ablation and the layouts grid are all planned."""
    proc = snakemake(workdir, "-n", "-p", configfile="workflow/configs/disttgl.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for size in (150, 300, 1200, 2400, 4800):
        assert f"results/synthetic/b{size}/summary.json" in out and f"--batch-size {size}" in out
    for run in ("static", "nostatic", "2x1x1", "1x2x2", "1x1x4"):
        assert f"results/synthetic/{run}/summary.json" in out
    assert "batch_size.svg" in out
