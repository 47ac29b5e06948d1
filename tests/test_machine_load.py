"""Machine load while measuring: another process spinning on one of our cores is seen as contention."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from disttgl.train import machine_load
from disttgl.train.machine_load import Interval, summarize

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 5: pass\n"


@pytest.mark.skipif(machine_load.busy_cpu_seconds() is None, reason="no /proc/stat (not Linux)")
def test_a_busy_process_on_our_cores_is_contention():
    child = subprocess.Popen([sys.executable, "-c", SPIN])  # inherits our affinity: spins on one of our cores
    try:
        time.sleep(0.3)  # past its interpreter start
        with Interval(threads=1) as m:
            time.sleep(1.5)  # we stay idle: what is busy is someone else
    finally:
        child.kill()
        child.wait()
    f = m.fields
    # other load on this shared machine can only add to it
    assert f["other_cores_busy"] > 0.5, f
    assert f["own_cores_busy"] < 0.3, f
    s = summarize([{k: f[k] for k in machine_load.ROW_FIELDS}])
    assert s["contended"] is True and s["contended_by"] == "other_cores_busy"


def test_fields_exist_and_are_finite():
    f = Interval().start().stop()
    for key in machine_load.ROW_FIELDS + ("own_cpu_s", "wall_s"):
        assert key in f
    assert f["cpu_count"] >= 1 and f["threads"] >= 1
    for key in ("load_avg", "own_cores_busy", "other_cores_busy"):
        assert f[key] is None or math.isfinite(f[key]), (key, f)
    if machine_load.busy_cpu_seconds() is not None:  # Linux: all three are measured; None would be no answer
        assert all(f[key] is not None for key in ("load_avg", "own_cores_busy", "other_cores_busy")), f


def test_summary_contention_rule():
    quiet = {"load_avg": 2.3, "cpu_count": 4, "threads": 2, "other_cores_busy": 0.1}
    busy = {**quiet, "other_cores_busy": 0.9}
    assert summarize([quiet, quiet])["contended"] is False
    s = summarize([quiet, busy])
    assert s["contended"] is True and s["other_cores_busy_max"] == 0.9 and s["other_cores_busy_mean"] == 0.5
    assert s["load_avg_max"] == 2.3 and s["cpu_count"] == 4 and s["threads"] == 2
    # without the CPU-time measure the load average minus our own threads decides
    no_cpu = [{**quiet, "other_cores_busy": None}]
    assert summarize(no_cpu)["contended"] is False and summarize(no_cpu)["contended_by"] == "load_avg"
    assert summarize([{**no_cpu[0], "load_avg": 2.6}])["contended"] is True
    # rows without the fields (an older checkpoint's history) leave it unknown
    assert summarize([{"epoch": 1}])["contended"] is None
