"""A real one-node SLURM cluster (not a mock): .ci/slurm-setup.sh installs and starts munged,
slurmctld and slurmd on this machine, then the workflow runs with the SLURM profile on the
synthetic dataset through a 2-rank training job. Needs root; skips with the reason otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # slow: runs the workflow to completion


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root (it installs slurm-wlm/munge and starts the daemons)")
    setup = str(REPO / ".ci" / "slurm-setup.sh")
    proc = subprocess.run([setup], capture_output=True, text=True, timeout=600)
    if proc.returncode == 77:
        pytest.skip(proc.stderr.strip() or "slurm-setup.sh could not set up SLURM here")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=True).stdout
    assert "idle" in out.split()
    yield
    if "already up" not in proc.stdout:  # leave a cluster we found running; stop the one we started
        subprocess.run([setup, "--stop"], capture_output=True, timeout=60)


@pytest.fixture
def workdir(tmp_path):
    """The workflow with its test configuration (.test/config.yaml: its one layout is 1x2x1)."""
    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copy(REPO / "config.yaml", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / ".test", tmp_path / ".test")
    return tmp_path


def submit(workdir: Path, target: str, rule: str, *configfiles: str, env: dict | None = None,
           timeout: int = 420) -> tuple[str, str]:
    """Run the workflow to ``target`` through the SLURM profile; (the executor's output, the SLURM job
    id of ``rule``'s job, which slurmctld reports COMPLETED)."""
    cmd = ["snakemake", "--profile", "workflow/profiles/slurm", target,
           # this cluster has no accounting database: job states come from squeue (MinJobAge = 600 s)
           "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "5",
           "--configfile", ".test/config.yaml", *configfiles]  # last: --configfile takes every word up to the next option
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "has been submitted with SLURM jobid" in out
    m = re.search(rf"rule {rule}:.*?submitted with SLURM jobid (\d+)", out, re.S)
    assert m, out[-3000:]
    return out, m.group(1)


def job_info(job_id: str) -> str:
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in job, job
    return job


def test_workflow_trains_2_ranks_through_slurm(cluster, workdir):
    target = "results/synthetic/1x2x1/summary.json"
    out, job_id = submit(workdir, target, "train_parallel")
    summary = json.loads((workdir / target).read_text())
    assert summary["parallelism"] == "1x2x1" and summary["world_size"] == 2
    assert summary["test_mrr"] is not None and len(summary["rank_events_per_s"]) == 2
    # the training ran as a SLURM job: its id from the executor's output, its record from slurmctld
    assert "NumCPUs=2" in job_info(job_id)
    train_log = (workdir / "logs" / "synthetic" / "train-1x2x1.log").read_text()
    assert "1x2x1 on 2 ranks" in train_log


def test_tma_trainers_are_job_steps_and_one_dying_ends_only_its_own(cluster, workdir):
    """RandomTMA through the SLURM profile: the tma job asks for a task per trainer, `disttgl tma`
    starts each trainer as a job step of its own (--launcher auto inside the job), trainer 1 is
    killed by the fault hook, its step ends alone, the other trains on, and the restarted trainer is
    a new step of the same job that rejoins the rounds."""
    (workdir / "tma.yaml").write_text(
        "parallel: {configs: [], threads_per_rank: 1}\n"
        "tma_runs:\n  slurm_tma: {method: random, rule: incident, parts: 2, sync_every: 10steps, rounds: 12,\n"
        "              time_limit: 5min, eval_every: 6, restart_dead: true, max_restarts: 1}\n")
    target = "results/synthetic/slurm_tma/summary.json"
    # sbatch exports the environment (--export=ALL): the fault hook reaches the trainers' steps
    out, job_id = submit(workdir, target, "tma", "tma.yaml", env={**os.environ, "DISTTGL_FAULT": "1:15:2"},
                         timeout=480)
    assert "NumTasks=2" in job_info(job_id)
    summary = json.loads((workdir / target).read_text())
    assert summary["launcher"] == "srun" and summary["config"]["launcher"] == "srun"
    assert summary["dead_trainers"] == [1] and summary["restarts"] == 1 and summary["rounds"] == 12
    steps = summary["placements"]
    assert {s["slurm_job_id"] for p in steps.values() for s in p} == {job_id}
    ids = [s["slurm_step_id"] for p in ("0", "1") for s in steps[p]]
    assert len(ids) == 3 and len(set(ids)) == 3  # trainer 0, trainer 1, trainer 1 again: three steps
    # the trainers advertise their stores by host name, not localhost: peers on other nodes reach them
    lighthouse_log = (workdir / "results/synthetic/slurm_tma/lighthouse.log").read_text()
    assert f'store_address: "{socket.gethostname()}:' in lighthouse_log and 'store_address: "localhost' not in lighthouse_log
    lines = [json.loads(x) for x in (workdir / "results/synthetic/slurm_tma/rounds.jsonl").read_text().splitlines()]
    died = [x for x in lines if x["kind"] == "event" and x["event"] == "trainer_died"]
    assert [d["part"] for d in died] == [1] and died[0]["rc"] != 0
    assert len(steps["0"]) == 1 and not [x for x in died if x["part"] == 0]  # trainer 0's step lived on
    rounds = [x for x in lines if x["kind"] == "round"]
    restarted = [x for x in lines if x["kind"] == "event" and x["event"] == "trainer_restarted"][0]["time"]
    # the new step rejoined: healed to the last average (present, nothing of its own), then contributing
    after = [r for r in rounds if r["time"] > restarted and 1 in r["participants"]]
    assert after[0]["participants"] == [0, 1] and after[0]["contributors"] == [0], after[0]
    assert after[-1]["contributors"] == [0, 1] and after[-1]["round"] == 12


def test_a_distributed_snapshot_run_is_one_slurm_job_with_its_ranks(cluster, workdir):
    """A snapshot DGNN run of 2 ranks through the SLURM profile: one job with the ranks' CPUs, whose
    `disttgl launch` starts torchrun inside it (one node here; several nodes add srun, tested dry in
    tests/test_workflow.py), ending with the same summary as a local run's."""
    (workdir / "snap.yaml").write_text(
        "parallel: {configs: [], threads_per_rank: 1}\n"
        "snapshot_runs:\n  slurm_snap: {procs: 2, num_snapshots: 12, edge_life: 3, epochs: 3, hidden: 8}\n")
    target = "results/synthetic/slurm_snap/summary.json"
    out, job_id = submit(workdir, target, "snapshot_train", "snap.yaml")
    assert "NumCPUs=2" in job_info(job_id)
    summary = json.loads((workdir / target).read_text())
    assert summary["parallel"]["world"] == 2 and len(summary["parallel"]["comm_bytes"]) == 2
    assert summary["test_mrr"] is not None
