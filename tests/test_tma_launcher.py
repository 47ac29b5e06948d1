"""How `disttgl tma` starts its trainers (docs/design.md §14.6): child processes, or one SLURM job
step each; the choice from the environment, and the error outside an allocation."""

from __future__ import annotations

import os
import stat

import pytest

from disttgl.errors import DataError
from disttgl.tma.launcher import Launcher, resolve_launcher, step_record


@pytest.fixture
def fake_srun(tmp_path):
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def test_auto_is_local_outside_slurm_and_srun_inside(fake_srun):
    assert resolve_launcher("auto", 2, env={"PATH": fake_srun}).kind == "local"  # no job
    assert resolve_launcher("auto", 2, env={"SLURM_JOB_ID": "7", "PATH": "/nonexistent"}).kind == "local"  # no srun
    inside = resolve_launcher("auto", 2, env={"SLURM_JOB_ID": "7", "PATH": fake_srun})
    assert inside == Launcher("srun", 2)
    assert resolve_launcher("local", 2, env={"SLURM_JOB_ID": "7", "PATH": fake_srun}).kind == "local"


def test_srun_outside_an_allocation_and_unknown_launchers_are_errors(fake_srun):
    with pytest.raises(DataError, match="needs a SLURM allocation"):
        resolve_launcher("srun", 1, env={"PATH": fake_srun})
    with pytest.raises(DataError, match="--launcher must be one of"):
        resolve_launcher("mpirun", 1, env={})


def test_one_step_per_trainer_with_its_own_cpus():
    argv = ["python", "-m", "disttgl.tma.worker", "RUN", "2", "1"]
    assert Launcher("local").trainer_command(2, 1, argv) == argv
    cmd = Launcher("srun", 3).trainer_command(2, 1, argv)
    assert cmd[:1] == ["srun"] and cmd[-len(argv):] == argv
    flags = cmd[1:-len(argv)]
    # one task, on one node, only its CPUs (steps share the allocation), a failure ends only this step
    assert {"--ntasks=1", "--nodes=1", "--cpus-per-task=3", "--exact", "--kill-on-bad-exit=0"} <= set(flags)
    assert "--job-name=tma-trainer-2.1" in flags
    assert Launcher("local").host() == "localhost" and Launcher("srun").host() != "localhost"


def test_a_trainer_records_its_slurm_step():
    rec = step_record({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "3", "SLURMD_NODENAME": "n1", "OTHER": "x"})
    assert (rec["slurm_job_id"], rec["slurm_step_id"], rec["slurmd_nodename"]) == ("12", "3", "n1")
    assert rec["pid"] == str(os.getpid()) and "other" not in rec
    assert set(step_record({})) == {"host", "pid"}
