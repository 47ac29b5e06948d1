"""A real one-node SLURM cluster (not a mock): .ci/slurm-setup.sh installs and starts munged,
slurmctld and slurmd on this machine, then the workflow runs with the SLURM profile on the
synthetic dataset through a 2-rank training job. Needs root; skips with the reason otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
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


def test_workflow_trains_2_ranks_through_slurm(cluster, workdir):
    target = "results/synthetic/1x2x1/summary.json"
    cmd = ["snakemake", "--profile", "workflow/profiles/slurm", target,
           # this cluster has no accounting database: job states come from squeue (MinJobAge = 600 s)
           "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "5",
           "--configfile", ".test/config.yaml"]  # last: --configfile takes every word up to the next option
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "has been submitted with SLURM jobid" in proc.stdout + proc.stderr
    summary = json.loads((workdir / target).read_text())
    assert summary["parallelism"] == "1x2x1" and summary["world_size"] == 2
    assert summary["test_mrr"] is not None and len(summary["rank_events_per_s"]) == 2
    # the training ran as a SLURM job: find its id in the executor's output and ask slurmctld
    out = proc.stdout + proc.stderr
    m = re.search(r"rule train_parallel:.*?submitted with SLURM jobid (\d+)", out, re.S)
    assert m, out[-3000:]
    job = subprocess.run(["scontrol", "show", "job", m.group(1)], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in job and "NumCPUs=2" in job, job
    train_log = (workdir / "logs" / "synthetic" / "train-1x2x1.log").read_text()
    assert "1x2x1 on 2 ranks" in train_log
