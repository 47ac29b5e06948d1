"""`disttgl tma` end to end on CPU (Lighthouse + 3 trainer processes on torchft, one thread each):
the run's files, a trainer killed mid-run, a dead trainer restarted, the Lighthouse killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchft")

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--dim", "16", "--time-dim", "16", "--heads", "2", "--batch-size", "100", "--neg-sets", "4"]
pytestmark = pytest.mark.slow


def sh(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disttgl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tma_run")
    for args in (["synth", "--out", "g.h5", "--events", "3000", "--nodes", "100", "--edge-dim", "8"],
                 ["partition", "g.h5", "--parts", "3", "--method", "random", "--rule", "incident", "--out", "p"]):
        proc = sh(*args, cwd=d)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def tma(d: Path, out: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return sh("tma", "p", "--out", out, *MODEL, *args, cwd=d, env=env)


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]


def rounds(run: Path) -> list[dict]:
    return [r for r in lines(run) if r["kind"] == "round"]


def events(run: Path, kind: str) -> list[dict]:
    return [r for r in lines(run) if r["kind"] == "event" and r["event"] == kind]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["weights"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def clean(parts):
    proc = tma(parts, "clean", "--sync-every", "10steps", "--rounds", "6", "--time-limit", "10min")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return parts / "clean"


def test_clean_run_averages_every_round_over_all_trainers(clean):
    rs = rounds(clean)
    assert [r["round"] for r in rs] == [1, 2, 3, 4, 5, 6]
    assert all(r["participants"] == r["contributors"] == [0, 1, 2] and r["steps"] == {"0": 10, "1": 10, "2": 10}
               for r in rs)
    assert [r["stop"] for r in rs] == [False] * 5 + [True] and not any(r["split"] for r in rs)
    last = weights(clean / "rounds" / rs[-1]["file"])
    for p in range(3):  # every trainer ends on the last published average
        assert same(weights(clean / f"trainer-{p}" / "final.pt"), last)
    summary = json.loads((clean / "summary.json").read_text())
    assert summary["rounds"] == 6 and summary["trainers"] == [0, 1, 2] and summary["degraded"] is False
    assert summary["config"]["method"] == "random" and summary["config"]["rule"] == "incident"
    assert 0 < summary["test_mrr"] <= 1 and summary["best_round"] == summary["best_epoch"] >= 1
    rows = [json.loads(x) for x in (clean / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]  # --eval-every 1: every round, in order
    assert all(0 < r["val_mrr"] <= 1 and r["participants"] == [0, 1, 2] for r in rows)


def test_a_trainer_killed_mid_run_leaves_the_others_training_to_the_time_limit(parts):
    """Time-based syncs (every 2 s, 12 s of training); trainer 2 SIGKILLs itself at its step 100, once 2 rounds are committed."""
    limit = 12.0
    proc = tma(parts, "killed", "--sync-every", "2s", "--time-limit", f"{limit:.0f}s", "--eval-every", "100",
               env={"DISTTGL_FAULT": "2:100:2"})  # after 2 committed rounds, whatever the machine's speed
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = parts / "killed"
    died = events(run, "trainer_died")
    assert [(e["part"], e["rc"]) for e in died] == [(2, -signal.SIGKILL)]
    rs = rounds(run)
    before = [r for r in rs if r["time"] < died[0]["time"]]
    after = [r for r in rs if r["time"] > died[0]["time"]]
    assert before and all(r["participants"] == [0, 1, 2] and r["dead"] == [] for r in before)
    assert after and all(r["participants"] == [0, 1] and r["dead"] == [2] for r in after)
    assert after[-1]["stop"] and after[-1]["wall_s"] >= limit
    last = weights(run / "rounds" / after[-1]["file"])
    for p in (0, 1):  # the survivors hold the last published average
        assert same(weights(run / f"trainer-{p}" / "final.pt"), last)
    assert not (run / "trainer-2" / "final.pt").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["degraded"] is True and summary["dead_trainers"] == [2]
    t = summary["config"]["timeouts"]
    # no hang: the deadline, plus the survivors' one stall (a heartbeat timeout), plus slack for the
    # last round and the final evaluation; a survivor waiting out its quorum timeout would exceed it
    assert summary["wall_seconds"] < limit + t["heartbeat"] + t["join"] + t["collective"]


def test_a_restarted_trainer_rejoins_with_the_last_average_and_runs_repeat(parts, clean):
    proc = tma(parts, "restarted", "--sync-every", "10steps", "--rounds", "20", "--time-limit", "10min",
               "--restart-dead", "--eval-every", "100", env={"DISTTGL_FAULT": "2:25"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = parts / "restarted"
    assert [e["part"] for e in events(run, "trainer_died")] == [2]
    assert [(e["part"], e["attempt"]) for e in events(run, "trainer_restarted")] == [(2, 1)]
    rs = rounds(run)
    assert [r["round"] for r in rs] == list(range(1, 21))
    assert rs[0]["dead"] == [] and all(r["dead"] == [] for r in rs if r["time"] > events(run, "trainer_restarted")[0]["time"])
    # --sync-every steps is deterministic: the rounds before the kill equal the clean run's, bit for bit
    for r in rs[:2]:
        assert r["contributors"] == [0, 1, 2]
        assert same(weights(run / "rounds" / r["file"]), weights(clean / "rounds" / r["file"]))
    died = events(run, "trainer_died")[0]["time"]
    back = next(i for i, r in enumerate(rs) if r["time"] > died and 2 in r["participants"])
    assert 2 not in rs[back]["contributors"]  # it healed to the last average: nothing of its own to add
    assert all(r["contributors"] == [0, 1, 2] for r in rs[back + 1:])
    last = weights(run / "rounds" / rs[-1]["file"])
    assert all(same(weights(run / f"trainer-{p}" / "final.pt"), last) for p in range(3))
    assert torch.load(run / "trainer-2" / "final.pt", weights_only=True)["attempt"] == 1
    assert json.loads((run / "summary.json").read_text())["restarts"] == 1


def test_a_trainer_killed_inside_an_allreduce_fails_that_round_only(parts, clean):
    """Trainer 1 SIGKILLs itself inside round 3's allreduce (issued, not waited for): the survivors'
    round 3 fails (logged with its stall), they train on, the next round forms without trainer 1,
    and the run ends at its rounds with the survivors holding the last average."""
    proc = tma(parts, "in_allreduce", "--sync-every", "10steps", "--rounds", "8", "--time-limit", "10min",
               "--eval-every", "100", env={"DISTTGL_FAULT": "1:1:2:allreduce"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = parts / "in_allreduce"
    died = events(run, "trainer_died")
    assert [(e["part"], e["rc"]) for e in died] == [(1, -signal.SIGKILL)]
    rs = rounds(run)
    assert [r["round"] for r in rs] == list(range(1, 9)) and rs[-1]["stop"]
    for r in rs[:2]:  # deterministic up to the death: the clean run's rounds, bit for bit
        assert r["participants"] == [0, 1, 2] and same(weights(run / "rounds" / r["file"]),
                                                       weights(clean / "rounds" / r["file"]))
    assert all(r["participants"] == [0, 2] and r["dead"] == [1] for r in rs[2:])
    failed = [x for x in lines(run) if x["kind"] == "failed_round"]
    assert sorted({f["part"] for f in failed}) == [0, 2] and all(f["round"] == 3 for f in failed[:2]), failed
    assert all(f.get("error") for f in failed)
    summary = json.loads((run / "summary.json").read_text())
    t = summary["config"]["timeouts"]
    # the failed round cost each survivor at most one collective timeout (plus the heartbeat of the
    # quorum that dropped the dead trainer), never its 600 s quorum timeout
    assert summary["failed_rounds"] == len(failed) and summary["longest_failed_round_s"] < t["collective"] + 10
    last = weights(run / "rounds" / rs[-1]["file"])
    assert all(same(weights(run / f"trainer-{p}" / "final.pt"), last) for p in (0, 2))
    assert summary["degraded"] is True and summary["dead_trainers"] == [1]


def test_the_lighthouse_killed_and_restarted_training_goes_on(parts):
    """SIGKILL the Lighthouse after round 5: the coordinator restarts it on its port, the rounds
    during the outage fail (each trainer keeps its weights and trains on), and rounds go on to 40."""
    run = parts / "lh"
    cmd = [sys.executable, "-m", "disttgl", "tma", "p", "--out", "lh", *MODEL, "--sync-every", "10steps",
           "--rounds", "40", "--time-limit", "10min", "--eval-every", "100"]
    proc = subprocess.Popen(cmd, cwd=parts, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        end = time.time() + 240
        while time.time() < end and proc.poll() is None:
            if (run / "rounds.jsonl").exists() and any(r["round"] >= 5 for r in rounds(run)):
                break
            time.sleep(0.1)
        killed_after = max(r["round"] for r in rounds(run))
        os.kill(int((run / "lighthouse.pid").read_text()), signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert killed_after < 40
    assert len(events(run, "lighthouse_died")) == 1 and len(events(run, "lighthouse_restarted")) == 1
    assert not events(run, "trainer_died")
    rs = rounds(run)
    assert max(r["round"] for r in rs) == 40 and rs[-1]["stop"]
    restart = events(run, "lighthouse_restarted")[0]["time"]
    assert any(r["time"] > restart and r["participants"] == [0, 1, 2] for r in rs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["lighthouse_restarts"] == 1 and summary["degraded"] is False


def test_one_static_table_of_the_whole_graph_serves_every_trainer(parts):
    """`--static`: the whole graph's frozen table feeds every trainer (part stores keep global ids) and
    the global evaluation; a table of another graph is refused before any trainer starts."""
    from disttgl.train.static_table import save_static

    rng = torch.Generator().manual_seed(0)
    save_static(parts / "static.h5", torch.randn(100, 8, generator=rng).numpy(), graph_path=str(parts / "g.h5"))
    proc = tma(parts, "static", "--static", "static.h5", "--static-dropout", "0.1", "--sync-every", "10steps",
               "--rounds", "2", "--time-limit", "10min")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = parts / "static"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["static"].endswith("static.h5") and summary["config"]["static_dropout"] == 0.1
    assert summary["test_mrr"] is not None
    for p in range(3):  # each trainer's model has the static projection, averaged like every weight
        final = weights(run / f"trainer-{p}" / "final.pt")
        assert any(k.startswith("embed.static_proj") or "static_proj" in k for k in final), sorted(final)
    other = parts / "other"
    other.mkdir(exist_ok=True)
    assert sh("synth", "--out", "o.h5", "--events", "500", "--nodes", "100", "--seed", "5", cwd=other).returncode == 0
    save_static(parts / "wrong.h5", torch.zeros(100, 8).numpy(), graph_path=str(other / "o.h5"))
    proc = tma(parts, "wrong", "--static", "wrong.h5", "--sync-every", "10steps", "--rounds", "1")
    assert proc.returncode == 2 and "wrong.h5" in proc.stderr and "graph" in proc.stderr, proc.stderr[-2000:]
    assert not (parts / "wrong" / "summary.json").exists()
