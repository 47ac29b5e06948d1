"""Processes that must not outlive their parent, and one writer per run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from disttgl.errors import DataError
from disttgl.train.run_lock import run_dir_lock

CHILD = """
import time
from disttgl import lifetime
if {fallback}:
    lifetime._prctl_pdeathsig = lambda sig: False  # the watching thread, as where prctl is missing
lifetime.exit_with_parent(poll=0.1)
print("ready", flush=True)
time.sleep(60)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)  # as torchrun starts its ranks
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("fallback", [False, True], ids=["prctl", "watch-thread"])
def test_a_child_exits_when_its_parent_is_killed(fallback):
    code = PARENT.format(child=CHILD.format(fallback=fallback))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    assert child.is_running()
    parent.kill()
    parent.wait()
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, "the child outlived its killed parent"


HOLDER = textwrap.dedent("""
    import sys, time
    from disttgl.train.run_lock import run_dir_lock
    with run_dir_lock(sys.argv[1], wait=0):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(d, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(d), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    p = _holder(tmp_path / "run", 30)
    try:
        with pytest.raises(DataError, match=rf"in use by pid {p.pid} on "):
            with run_dir_lock(tmp_path / "run", wait=0.5):
                pass
    finally:
        p.kill()
        p.wait()


def test_a_second_writer_waits_for_the_first_then_runs(tmp_path):
    p = _holder(tmp_path / "run", 1.5)
    start = time.monotonic()
    with run_dir_lock(tmp_path / "run", wait=None):
        waited = time.monotonic() - start
        assert p.poll() is not None  # the first writer had finished
    assert waited > 0.5
    p.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    p = _holder(tmp_path / "run", 30)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with run_dir_lock(tmp_path / "run", wait=0) as path:
        assert f"pid {os.getpid()}" in path.read_text()


@pytest.mark.slow
def test_train_waits_for_the_writer_holding_its_run_directory(tmp_path):
    def sh(*args):
        return subprocess.run([sys.executable, "-m", "disttgl", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    assert sh("synth", "--out", "g.h5", "--events", "600", "--nodes", "30", "--edge-dim", "4").returncode == 0
    assert sh("batches", "g.h5", "--out", "c.h5", "--batch-size", "100", "--neg-sets", "2",
              "--no-progress").returncode == 0
    # The holder used to sleep 2 s and exit 0 whatever train did, so "it kept the directory to itself"
    # could not fail. Now it holds the lock until told to let go, and then lists the directory.
    release = tmp_path / "release"
    hold = textwrap.dedent("""
        import os, sys, time
        from disttgl.train.run_lock import run_dir_lock
        with run_dir_lock(sys.argv[1], wait=0):
            print("locked", flush=True)
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.05)
            print(sorted(os.listdir(sys.argv[1])), flush=True)
    """)
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "run"), str(release)],
                              stdout=subprocess.PIPE, text=True)
    train = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        train = subprocess.Popen([sys.executable, "-m", "disttgl", "train", "g.h5", "c.h5", "--out", "run", "--epochs",
                                  "1", "--dim", "8", "--time-dim", "8", "--no-progress", "--threads", "1", "--resume"],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        said = ""
        for line in train.stderr:  # up to the line saying it waits (or the end, if it never does)
            said += line
            if "in use by pid" in line:
                break
        assert f"in use by pid {holder.pid}" in said, said[-2000:]
        # a run that went on anyway would be done in about a second; a waiting one is still there
        with pytest.raises(subprocess.TimeoutExpired):
            train.wait(timeout=3)
        release.touch()
        assert holder.stdout.readline().strip() == "['.lock']"  # train wrote nothing while it was held
        assert holder.wait(timeout=30) == 0  # it kept the directory to itself until it was done
        said += train.communicate(timeout=300)[1]
        assert train.returncode == 0, said[-2000:]
    finally:
        release.touch()
        for p in (holder, train):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert (tmp_path / "run" / "summary.json").exists()
