"""`disttgl snapshot-train --parallel` under real torchrun launches (docs/design.md §11.6, §11.7):
P = 2 stopped after 2 epochs and resumed equals the uninterrupted P = 2 run, counters included; and
two torchruns with `--nnodes 2 --nproc-per-node 1` meeting on 127.0.0.1 by c10d rendezvous (two
"machines" on one host) train the same run as P = 2 on one node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from disttgl.cli import main
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--hidden", "8", "--node-features", "embedding", "--embedding-dim", "6", "--eval-negatives", "9",
        "--threads", "1", "--model", "tmgcn", "--m-window", "3"]
TIMING = {"seconds", "train_events_per_s", "load_avg", "cpu_count", "threads", "own_cores_busy", "other_cores_busy"}

def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _torchrun(cwd, out, epochs, *launcher, extra=()):
    launcher = launcher or ("--standalone", "--nproc-per-node=2")
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "disttgl", "snapshot-train", "s.h5",
            "g.h5", "--out", out, "--parallel", "--epochs", str(epochs), *ARGS, *extra]


def _run(cwd, *cmd_args, **kw):
    proc = subprocess.run(_torchrun(cwd, *cmd_args, **kw), cwd=cwd, capture_output=True, text=True, timeout=240,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in path.read_text().splitlines()]


def test_launch_runs_snapshot_train_on_every_rank():
    from disttgl.parallel.launch import command

    one = command(1, 2, ["s.h5", "g.h5", "--parallel"], env={}, program="snapshot-train")
    assert "--standalone" in one and one[-6:] == ["-m", "disttgl", "snapshot-train", "s.h5", "g.h5", "--parallel"]
    two = command(2, 1, ["s.h5"], env={"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1"}, program="snapshot-train")
    assert two[0] == "srun" and "--nnodes=2" in two and two[-4:] == ["-m", "disttgl", "snapshot-train", "s.h5"]
    assert command(1, 2, ["g.h5"], env={})[-3:] == ["-m", "disttgl.train", "g.h5"]  # the default


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("snap-torchrun")
    write_graph(generate(SynthConfig(events=1500, nodes=40, edge_dim=0, seed=1)), d / "g.h5")
    assert main(["snapshots", str(d / "g.h5"), "--num-snapshots", "20", "--edge-life", "3", "--out",
                 str(d / "s.h5")]) == 0
    _run(d, "p2", 3)  # the uninterrupted run both tests compare with
    return d


@pytest.mark.slow
def test_parallel_run_resumed_equals_the_uninterrupted_one(data):
    _run(data, "cut", 2, extra=["--resume"])
    _run(data, "cut", 3, extra=["--resume"])
    assert _rows(data / "cut" / "metrics.jsonl") == _rows(data / "p2" / "metrics.jsonl")
    one, two = (json.loads((data / r / "summary.json").read_text()) for r in ("p2", "cut"))
    for key in ("best_epoch", "epochs", "test_mrr", "test_ap", "val_mrr", "transfer_bytes"):
        assert two[key] == one[key], key
    # every rank's counters carried over the restart: the same bytes per collective as one go
    assert two["parallel"]["comm_bytes"] == one["parallel"]["comm_bytes"]
    assert two["parallel"]["transfer_bytes_per_rank"] == one["parallel"]["transfer_bytes_per_rank"]


@pytest.mark.slow
def test_the_report_reads_a_real_parallel_run(data):
    from disttgl.report.collect import load_run
    from disttgl.report.snapshot_table import comm_rows

    (row,) = comm_rows([load_run(data / "p2")])
    # the training step's blocks, d = 8, float32: the measured bytes are the block formula
    assert row["procs"] == 2 and row["d"] == 8 and row["element_bytes"] == 4
    assert row["total"] == row["formula"] <= row["bound"] and sum(row["per_rank"]) == row["total"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost_train_the_one_node_run(data):
    port = _free_port()
    launcher = lambda n: ("--nnodes", "2", "--node-rank", str(n), "--nproc-per-node", "1",  # noqa: E731
                          "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "snap2",
                          # both "nodes" match 127.0.0.1: say which one hosts the rendezvous store
                          "--rdzv-conf", f"is_host={int(n == 0)}")
    procs = [subprocess.Popen(_torchrun(data, "twonode", 3, *launcher(n)), cwd=data, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=_env()) for n in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    one, two = (json.loads((data / r / "summary.json").read_text()) for r in ("p2", "twonode"))
    assert two["parallel"]["world"] == 2
    rows = [_rows(data / r / "metrics.jsonl") for r in ("p2", "twonode")]
    # the same ranks computing the same sums: the same losses and metrics as on one node
    assert [r["train_loss"] for r in rows[1]] == pytest.approx([r["train_loss"] for r in rows[0]], rel=1e-12)
    for key in ("best_epoch", "test_mrr", "test_ap", "val_mrr"):
        assert two[key] == pytest.approx(one[key], rel=1e-12), key
    assert two["parallel"]["comm_bytes"] == one["parallel"]["comm_bytes"]


def test_a_diverging_parallel_run_stops_every_rank(data):
    """Rank 0 alone scores the evaluation; it shares the verdict, so every rank stops with the same clear
    error (not rank 0 with a traceback and the others killed by torchrun) and no epoch is written."""
    start = time.monotonic()
    proc = subprocess.run(_torchrun(data, "diverged", 2, extra=["--lr", "1e30"]), cwd=data,
                          capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode != 0 and time.monotonic() - start < 120
    assert proc.stderr.count("non-finite validation or test scores at epoch 0") == 2, proc.stderr[-3000:]
    assert not (data / "diverged" / "metrics.jsonl").exists()
