"""The dataset registry: entries are consistent, lookup is forgiving, `disttgl datasets` prints it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from disttgl.cli import main
from disttgl.errors import DataError
from disttgl.data.registry import DATASETS, FORMATS, convert_arguments, get_dataset, raw_paths


def test_entries_are_consistent():
    assert set(DATASETS) == {"WIKI", "REDDIT", "MOOC", "LASTFM", "GDELT", "UCI", "BITCOIN-OTC", "BITCOIN-ALPHA",
                             "synthetic",
                             "tgbl-wiki", "tgbl-review", "tgbl-coin", "tgbl-comment", "tgbl-flight"}
    seen: set[str] = set()
    for d in DATASETS.values():
        for key in (d.name, *d.aliases):
            assert key.lower() not in seen, f"{key} names two datasets"
            seen.add(key.lower())
        assert d.split in ("chronological", "ext_roll", "tgb")
        assert (d.split == "tgb") == (d.format == "tgb") == (d.tgb_name is not None)
        assert (d.format is None) == (not d.files) == (d.name == "synthetic")
        assert d.format is None or d.format in FORMATS
        for f in d.files:
            assert re.fullmatch(r"https?://\S+/" + re.escape(f.filename), f.url)
            assert f.gzip == f.filename.endswith(".gz")
            assert bool(f.unzip) == f.filename.endswith(".zip")
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)


def test_sources_and_flags():
    for name, stem in [("WIKI", "wikipedia"), ("REDDIT", "reddit"), ("MOOC", "mooc"), ("LASTFM", "lastfm")]:
        d = DATASETS[name]
        assert [f.url for f in d.files] == [f"http://snap.stanford.edu/jodie/{stem}.csv"]
        assert (d.format, d.bipartite, d.split) == ("jodie", True, "chronological")
    g = DATASETS["GDELT"]
    assert [f.filename for f in g.files] == ["edges.csv", "edge_features.pt", "node_features.pt", "labels.csv",
                                             "ec_edge_class.pt.pt"]
    assert all(f.url.startswith("https://s3.us-west-2.amazonaws.com/dgl-data/dataset/tgl/GDELT/") for f in g.files)
    assert (g.format, g.bipartite, g.split) == ("tgl", False, "ext_roll")
    u = DATASETS["UCI"]
    assert u.files[0].url == "https://snap.stanford.edu/data/CollegeMsg.txt.gz"
    assert u.files[0].local_name == "CollegeMsg.txt"
    assert (u.format, u.bipartite, u.directed) == ("snap", False, False)


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["WIKI"].bipartite = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        DATASETS["NEW"] = DATASETS["WIKI"]  # type: ignore[index]


@pytest.mark.parametrize("name,expected", [("wiki", "WIKI"), ("Wikipedia", "WIKI"), ("collegemsg", "UCI"),
                                           ("UCI", "UCI"), ("uci", "UCI"), ("  gdelt ", "GDELT"),
                                           ("SYNTHETIC", "synthetic")])
def test_lookup(name, expected):
    assert get_dataset(name).name == expected


def test_unknown_name():
    with pytest.raises(DataError) as err:
        get_dataset("wikipedya")
    assert err.value.path is None
    assert "'wikipedya'" in str(err.value) and "WIKI" in str(err.value) and "UCI" in str(err.value)


def test_convert_arguments():
    raw = Path("data/x/raw")
    assert convert_arguments("wikipedia", raw) == [
        str(raw / "wikipedia.csv"), "--format", "jodie", "--bipartite", "--split", "chronological"]
    assert convert_arguments("collegemsg", raw) == [
        str(raw / "CollegeMsg.txt"), "--format", "snap", "--no-bipartite", "--split", "chronological"]
    assert convert_arguments("GDELT", raw) == [
        *(str(raw / f) for f in ("edges.csv", "edge_features.pt", "node_features.pt", "labels.csv",
                                 "ec_edge_class.pt.pt")),
        "--format", "tgl", "--no-bipartite", "--split", "ext_roll"]
    assert raw_paths("uci", raw) == [raw / "CollegeMsg.txt"]
    from dataclasses import replace

    directed = {"D": replace(get_dataset("uci"), name="D", aliases=(), directed=True)}
    assert convert_arguments("D", raw, directed) == [
        str(raw / "CollegeMsg.txt"), "--format", "snap", "--no-bipartite", "--directed", "--split", "chronological"]
    assert raw_paths("synthetic", raw) == []
    with pytest.raises(DataError, match="disttgl synth"):
        convert_arguments("synthetic", raw)


def test_convert_arguments_parse_with_convert():
    convert = pytest.importorskip("disttgl.data.convert")
    import argparse
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    for name in ("WIKI", "GDELT", "UCI", "tgbl-wiki", "tgbl-review"):
        args = parser.parse_args(convert_arguments(name, "raw") + ["--out", "g.h5"])
        d = get_dataset(name)
        assert (args.fmt, args.bipartite, args.directed, args.split) == (d.format, d.bipartite, d.directed, d.split)


def test_datasets_cli_json(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == list(DATASETS)
    uci = by_name["UCI"]
    assert uci["files"] == [{"filename": "CollegeMsg.txt.gz", "url": "https://snap.stanford.edu/data/CollegeMsg.txt.gz",
                             "sha256": None, "gzip": True, "local_name": "CollegeMsg.txt"}]
    assert (uci["format"], uci["bipartite"], uci["directed"], uci["split"]) == ("snap", False, False, "chronological")
    assert "collegemsg" in uci["aliases"]
    assert by_name["synthetic"]["files"] == [] and by_name["synthetic"]["format"] is None


def test_datasets_cli_table(capsys):
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["name", "format", "bipartite", "directed", "split"]
    assert [line.split()[0] for line in lines[1:]] == list(DATASETS)
