"""TMA averaging (disttgl.tma.averaging, disttgl.tma.replica on torchft, disttgl.tma.plan): a round's
result is the float64 mean of the live trainers' weights, on a real Lighthouse and gloo group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from disttgl.errors import DataError
from disttgl.tma.averaging import Contribution, pack, unpack, weight_keys
from disttgl.tma.plan import Timeouts, next_tick, parse_duration, parse_sync_every

REPO = Path(__file__).resolve().parents[1]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    m.register_buffer("count", torch.tensor(3))  # an integer buffer: not a weight, never averaged
    return m


def _mean64(states: list[dict], key: str) -> np.ndarray:
    """The float64 mean of the weights, cast back to float32: the reference."""
    return np.mean(np.stack([s[key].detach().numpy().astype(np.float64) for s in states]), 0).astype(np.float32)


def test_summed_round_vectors_give_the_float64_mean_of_the_contributors():
    states = [_model(s).state_dict() for s in range(4)]
    keys = weight_keys(states[0])
    assert "count" not in keys and len(keys) == 6
    parts = 5
    # part 3 healed in this round (c = 0): present, not averaged; part 4 is not in the round at all
    contribs = [Contribution(0, True, steps=7, events=70), Contribution(1, True, steps=5, events=50),
                Contribution(2, True, steps=6, events=60, stop=True), Contribution(3, False)]
    total = sum(pack(s, keys, parts, c) for s, c in zip(states, contribs))
    res = unpack(total, states[0], keys, parts)
    assert res.present == [0, 1, 2, 3] and res.contributors == [0, 1, 2] and res.stop
    assert res.steps == {0: 7, 1: 5, 2: 6, 3: 0} and res.events == {0: 70, 1: 50, 2: 60, 3: 0}
    for k in keys:
        assert res.mean[k].dtype == torch.float32
        assert np.array_equal(res.mean[k].numpy(), _mean64(states[:3], k)), k
    # can fail: a mean over all four present (the healed one counted) is another value
    assert not np.array_equal(res.mean[keys[0]].numpy(), _mean64(states, keys[0]))
    nobody = unpack(pack(states[0], keys, parts, Contribution(0, False)), states[0], keys, parts)
    assert nobody.mean is None and nobody.present == [0] and not nobody.stop


def test_durations_sync_periods_and_ticks():
    assert parse_duration("90") == 90 and parse_duration("2min") == 120 and parse_duration("1.5h") == 5400
    assert parse_sync_every("60s") == ("seconds", 60.0) and parse_sync_every("200steps") == ("steps", 200.0)
    for bad in ("0s", "-3", "fast", "0steps"):
        with pytest.raises(DataError):
            parse_sync_every(bad)
    assert next_tick(100.0, 10.0, 100.0) == 110.0 and next_tick(100.0, 10.0, 125.0) == 130.0
    assert next_tick(100.0, 10.0, 99.0) == 110.0  # before the start: the first tick
    t = Timeouts().resolved("seconds", 60.0)
    assert t.join == 5.0 and t.quorum == 130.0 and t.quorum_retries == 65  # a retry every 2 s
    s = Timeouts().resolved("steps", 200.0)
    assert s.join == 600.0 and s.quorum >= s.join + s.heartbeat and s.quorum / (s.quorum_retries + 1) <= 2.0


REPLICA = textwrap.dedent("""
    import json, os, sys, time
    import torch
    sys.path.insert(0, sys.argv[4])
    from tests.test_tma_averaging import _model
    from disttgl.tma.averaging import Contribution
    from disttgl.tma.plan import Timeouts
    from disttgl.tma.replica import Replica
    part, lighthouse, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    model = _model(part)
    t = Timeouts(heartbeat=2.0, join=30.0, quorum=60.0, collective=20.0).resolved("steps", 1)
    rep = Replica(part, 3, model, lighthouse, t)
    # the coordinator's start barrier: all three heartbeat before anyone asks for a round
    d = os.path.dirname(out)
    open(os.path.join(d, f"ready{part}"), "w").close()
    while not all(os.path.exists(os.path.join(d, f"ready{q}")) for q in range(3)):
        time.sleep(0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res, info = rep.average(Contribution(part, True, steps=1, events=10))
    torch.save({"before": before, "after": model.state_dict(), "present": res.present if res else None,
                "round": rep.round, "error": info.get("error")}, out)
    rep.shutdown()
    import os; os._exit(0)
""")


def test_a_torchft_round_is_the_float64_mean_of_the_live_trainers(tmp_path):
    pytest.importorskip("torchft")
    from disttgl.tma import lighthouse

    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    port = lighthouse.free_port()
    lh = lighthouse.start(port, join_s=30.0, heartbeat_s=2.0, log_path=tmp_path / "lh.log")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUST_LOG": "warn"}
    try:
        procs = [subprocess.Popen([sys.executable, str(script), str(p), f"http://localhost:{port}",
                                   str(tmp_path / f"r{p}.pt"), str(REPO)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for p in range(3)]
        outs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    finally:
        lh.terminate()
        lh.wait(timeout=30)
    assert all(p.returncode == 0 for p in procs), outs
    res = [torch.load(tmp_path / f"r{p}.pt", weights_only=True) for p in range(3)]
    assert [r["error"] for r in res] == [None] * 3 and all(r["present"] == [0, 1, 2] and r["round"] == 1 for r in res)
    befores = [r["before"] for r in res]
    for k in weight_keys(befores[0]):
        want = _mean64(befores, k)
        for r in res:  # bit-identical on every trainer, and the float64 mean
            assert np.array_equal(r["after"][k].numpy(), want), k
    assert all(int(r["after"]["count"]) == 3 for r in res)
