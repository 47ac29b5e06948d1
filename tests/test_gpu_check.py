"""benchmarks/gpu_check.sh, which has to work the first time a GPU is lent: without one it exits 77
and says so; its CPU dry run (GPU_CHECK_DEVICE=cpu, tiny data) runs every step and writes the JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run")
def test_without_a_gpu_it_exits_77_and_says_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_DEVICE"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 77 and "no CUDA GPU here" in proc.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_the_json(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env={**os.environ, "GPU_CHECK_DEVICE": "cpu"}, timeout=600)
    result = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], result["steps"])
    assert result["dry_run"] is True and "dry run" in result["gpu"]
    names = [s["step"] for s in result["steps"]]
    assert names == ["convert", "batches", "cuda_tests", "train", "profile", "pipeline", "two_ranks", "snap_convert",
                     "snap_transfer_small", "snap_synth", "snap_transfer_2m"]
    assert all(s["rc"] == 0 for s in result["steps"])
    assert result["train"]["bf16"] and result["train"]["device"] == "cpu"  # fp32 and bf16 alternated
    assert set(result["pipeline"]["best_events_per_s"]) == {"plain", "off", "threads"}  # streams: CUDA only
    assert result["two_ranks"]["parallelism"] == "1x2x1"
    assert result["pipeline_speedup_bound"] >= 1.0 and set(result["stages"]["tau"]) >= {"sample", "train", "write"}
    for size in ("small", "2m"):
        assert result["snapshot_transfer"][size]["identical"] is True
