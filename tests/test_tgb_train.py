"""`disttgl train --eval tgb`: TGB's protocol on the best epoch, kept across a resume, refused early."""

import json

import pytest
import torch

from disttgl.cache.build import build_cache
from disttgl.cache.format import BatchParams
from disttgl.cli import main
from disttgl.data.graph_store import write_graph
from disttgl.data.synth import SynthConfig, generate
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN
from disttgl.tgb.evaluate import evaluate_tgb
from disttgl.tgb.negatives_file import load_negatives
from disttgl.train.config import TrainConfig
from disttgl.train.epoch import load_features, model_config
from stores import synthetic_store

FLAGS = ["--dim", "16", "--time-dim", "16", "--threads", "1", "--prefetch", "2", "--no-progress", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tgbtrain")
    graph, cache = synthetic_store(d, SynthConfig(events=2500, nodes=60, edge_dim=4, seed=5),
                                   BatchParams(batch_size=100, neg_sets=2, eval_negatives=9), graph="g.h5", cache="c.h5")
    assert main(["tgb-negatives", str(graph), "--out", str(d / "tgb_negatives.h5"), "--num-neg", "20"]) == 0
    return d, graph, cache


def _train(d, graph, cache, out, *extra):
    return main(["train", str(graph), str(cache), "--out", str(out), "--eval", "tgb", *FLAGS, *extra])


def test_summary_has_tgb_metrics_of_the_best_epoch(data):
    d, graph, cache = data
    assert _train(d, graph, cache, d / "run", "--epochs", "2") == 0
    s = json.loads((d / "run" / "summary.json").read_text())
    for k in ("val_tgb_mrr", "test_tgb_mrr", "val_tgb_hits@10", "test_tgb_hits@10"):
        assert 0 < s[k] <= 1, k
    assert s["tgb"]["source"] == "hist_rnd" and s["tgb"]["num_neg"] == 20 and s["tgb"]["batch_size"] == 200
    assert s["tgb"]["best_epoch"] == s["best_epoch"]
    # the same numbers from the kept weights and memory, evaluated independently
    ckpt = torch.load(d / "run" / "checkpoint.pt", weights_only=True)
    kept = ckpt["tgb_best"]
    cfg = TrainConfig(graph=str(graph), cache=str(cache), out="", dim=16, time_dim=16)
    feats, g = load_features(str(graph), torch.device("cpu"))
    model = TGN(model_config(cfg, g, feats))
    model.load_state_dict(kept["model"])
    memory = NodeMemory(kept["memory"]["memory"].clone(), kept["memory"]["mail"].clone())
    got = {}
    for split in ("val", "test"):
        neg = load_negatives(d / "tgb_negatives.h5", split, graph_path=graph)
        got[split] = evaluate_tgb(model, memory, feats, str(graph), neg, split)["tgb_mrr"]
    assert (got["val"], got["test"]) == (s["val_tgb_mrr"], s["test_tgb_mrr"])
    # the kept weights are the best epoch's, not the last one's when they differ
    if s["best_epoch"] != 2:
        assert any(not torch.equal(kept["model"][k], ckpt["model"][k]) for k in kept["model"])


def test_resume_keeps_the_best_epoch(data):
    d, graph, cache = data
    assert _train(d, graph, cache, d / "full", "--epochs", "3") == 0
    assert _train(d, graph, cache, d / "part", "--epochs", "2") == 0
    assert _train(d, graph, cache, d / "part", "--epochs", "3", "--resume") == 0
    a = json.loads((d / "full" / "summary.json").read_text())
    b = json.loads((d / "part" / "summary.json").read_text())
    for k in ("best_epoch", "test_mrr", "val_tgb_mrr", "test_tgb_mrr", "test_tgb_hits@10"):
        assert a[k] == b[k], k


def test_missing_or_foreign_negatives_fail_before_training(data, tmp_path, capsys):
    d, graph, cache = data
    assert _train(d, graph, cache, tmp_path / "r1", "--epochs", "1", "--tgb-negatives", str(tmp_path / "no.h5")) == 2
    assert "no.h5" in capsys.readouterr().err and not (tmp_path / "r1" / "checkpoint.pt").exists()
    other = tmp_path / "other.h5"
    write_graph(generate(SynthConfig(events=2500, nodes=60, edge_dim=4, seed=6)), other)
    assert _train(d, graph, cache, tmp_path / "r2", "--epochs", "1", "--tgb-negatives", str(d / "tgb_negatives.h5"),
                  "--eval", "bogus") == 2
    assert "--eval must be disttgl or tgb" in capsys.readouterr().err
    neg_other = tmp_path / "neg_other.h5"
    assert main(["tgb-negatives", str(other), "--out", str(neg_other), "--num-neg", "5"]) == 0
    assert _train(d, graph, cache, tmp_path / "r3", "--epochs", "1", "--tgb-negatives", str(neg_other)) == 2
    assert "sha256" in capsys.readouterr().err and not (tmp_path / "r3" / "checkpoint.pt").exists()


def test_preset_tgb_is_tgbs_tgn_settings_on_a_cache_of_batches_of_200(data, tmp_path, capsys):
    d, graph, cache = data  # this cache holds batches of 100
    args = ["train", str(graph), str(cache), "--out", str(tmp_path / "r"), "--epochs", "1", "--preset", "tgb", *FLAGS]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(cache) in err and "batches of 200" in err and not (tmp_path / "r").exists()
    c200 = tmp_path / "c200.h5"
    build_cache(graph, c200, BatchParams(batch_size=200, neg_sets=2, eval_negatives=9), progress=False)
    assert main(["train", str(graph), str(c200), "--out", str(tmp_path / "ok"), "--epochs", "1", "--preset", "tgb",
                 *FLAGS]) == 0
    s = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert (s["lr"], s["config"]["lr"], s["config"]["loss"]) == (1e-4, 1e-4, "bce")
    assert main(["train", str(graph), str(cache), "--out", str(tmp_path / "alias"), "--tgb-compat", *FLAGS]) == 2
    assert "batches of 200" in capsys.readouterr().err  # --tgb-compat is --preset tgb


def test_workflow_refuses_preset_tgb_with_another_batch_size():
    from disttgl.errors import DataError
    from disttgl.workflow_config import check_config

    with pytest.raises(DataError, match="batches.batch_size = 600"):
        check_config({"datasets": ["synthetic"], "model": {"preset": "tgb"}, "batches": {"batch_size": 600}})
    check_config({"datasets": ["synthetic"], "model": {"preset": "tgb"}, "batches": {"batch_size": 200}})
