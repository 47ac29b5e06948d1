"""Edge classification on DistTGL's i x j x k trainers (torchrun, CPU, gloo): with the weights held
fixed, a 2x1x1 run's memory and validation F1 are one trainer's over memory batches of 2 x B,
positives only (docs/design.md §13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN
from disttgl.parallel.served_memory import table_state
from disttgl.train.config import TrainConfig
from disttgl.train.epoch import evaluate, load_features, model_config
from disttgl.train.task import make_task
from stores import sh


@pytest.mark.slow
def test_i2_edge_class_memory_and_validation_equal_one_trainer(tmp_path):
    d = tmp_path
    sh("synth", "--out", "g.h5", "--events", "3000", "--nodes", "100", "--edge-dim", "8", cwd=d)
    sh("batches", "g.h5", "--out", "c2.h5", "--batch-size", "100", "-i", "2", "--neg-sets", "2", "--no-progress", cwd=d)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "disttgl.train",
           "g.h5", "c2.h5", "--out", "run", "--parallelism", "2x1x1", "--task", "edge-class", "--dim", "16",
           "--time-dim", "16", "--heads", "2", "--lr", "0", "--dropout", "0", "--epochs", "1", "--timeout", "60",
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((d / "run" / "summary.json").read_text())
    assert summary["parallelism"] == "2x1x1" and summary["task"] == "edge-class"
    assert 0 <= summary["test_f1_micro"] <= 1 and "test_mrr" not in summary

    cfg = TrainConfig(graph=str(d / "g.h5"), cache="", out="", dim=16, time_dim=16, heads=2, dropout=0.0)
    feats, graph = load_features(cfg.graph, torch.device("cpu"))
    task = make_task("edge-class", "bce", graph.label, graph.split, torch.device("cpu"))
    model = TGN(model_config(cfg, graph, feats, classes=task.num_classes))
    model.load_state_dict(torch.load(d / "run" / "checkpoint.pt", weights_only=True)["model"])
    model.eval()
    torch.set_num_threads(1)
    # one trainer: memory batches of two batches, each reading the memory before the pair, no negatives
    mem = NodeMemory.zeros(graph.num_nodes, 16)
    with torch.no_grad(), open_cache(d / "c2.h5") as c:
        nb = c.num_batches("train")
        for g0 in range(0, nb, 2):
            part = [c.batch("train", b, negatives=False) for b in range(g0, min(g0 + 2, nb))]
            new = [model.classify(b, feats, *mem.gather(b))[1] for b in part]
            for b, m in zip(part, new):
                mem.write(b, m)
    want = torch.cat([mem.memory, mem.mail], 1).numpy()
    got = np.load(d / "run" / "memory-copy0-pass1.npy")
    assert np.abs(want).sum() > 0 and np.allclose(got, want, rtol=1e-5, atol=1e-6), np.abs(got - want).max()
    state = table_state(got, 16, torch.device("cpu"))
    nv = open_cache(d / "c2.h5").num_batches("val")
    val = evaluate(model, state, BatchLoader(d / "c2.h5", "val", [(b, 0) for b in range(nv)], negatives=False),
                   feats, task=task)
    row = json.loads((d / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_f1_micro"] == pytest.approx(val["f1_micro"], abs=1e-9)
    assert row["val_f1_macro"] == pytest.approx(val["f1_macro"], abs=1e-9)
