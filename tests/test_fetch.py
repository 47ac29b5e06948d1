"""`disttgl fetch`, fully offline: a local http.server stands in for the dataset hosts."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import logging
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

import disttgl.data.registry
from disttgl.cli import main
from disttgl.errors import DataError
from disttgl.data.fetch import fetch
from disttgl.data.graph_store import load_graph
from disttgl.data.registry import Dataset, RemoteFile

PAYLOAD = b"u,i,ts,label\n" + b"".join(b"%d,%d,%d.0,0\n" % (i % 7, 7 + i % 3, i) for i in range(500))
OTHER = b"1 2 10\n2 3 11\n3 1 12\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """http.server on 127.0.0.1 in a thread; counts GETs per path; can fail the first N of a path."""

    def __init__(self, root: Path):
        self.root, self.gets, self.fail = root, {}, {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                if server.fail.get(self.path, 0) > 0:
                    server.fail[self.path] -= 1
                    self.send_error(503, "flaky on purpose")
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    s = Server(root)
    yield s
    s.stop()


def unused_url() -> str:
    """A URL nobody listens on: fetching it fails at once (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def one_file(base: str, filename: str, sha256: str | None, gz: bool = False, name: str = "TESTSET"):
    f = RemoteFile(filename, f"{base}/{filename}", sha256, gzip=gz)
    return {name: Dataset(name, (f,), "jodie", True, False, "chronological", "test entry",
                          aliases=("testalias",))}


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_good_download(server, tmp_path):
    (server.root / "data.csv").write_bytes(PAYLOAD)
    out = tmp_path / "out"
    paths = fetch("testset", out, registry=one_file(server.url, "data.csv", sha(PAYLOAD)), retries=0)
    assert paths == [out / "data.csv"]
    assert paths[0].read_bytes() == PAYLOAD
    assert listing(out) == ["data.csv"]  # no temp file, no hash record (the hash was known)
    assert server.gets == {"/data.csv": 1}


def test_present_file_is_not_downloaded_again(server, tmp_path):
    (server.root / "data.csv").write_bytes(PAYLOAD)
    reg = one_file(server.url, "data.csv", sha(PAYLOAD))
    fetch("TESTSET", tmp_path / "out", registry=reg)
    server.stop()
    assert fetch("TESTSET", tmp_path / "out", registry=reg)[0].read_bytes() == PAYLOAD
    assert server.gets == {"/data.csv": 1}


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    (server.root / "data.csv").write_bytes(PAYLOAD)
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        fetch("TESTSET", out, registry=one_file(server.url, "data.csv", wrong), retries=0)
    msg = str(err.value)
    assert "data.csv" in msg and wrong in msg and sha(PAYLOAD) in msg
    assert listing(out) == []


def test_wrong_checksum_replaces_and_then_removes_a_stale_file(server, tmp_path):
    (server.root / "data.csv").write_bytes(PAYLOAD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_bytes(b"truncated")
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("TESTSET", out, registry=one_file(server.url, "data.csv", "1" * 64), retries=0)
    assert listing(out) == []
    # with the right hash, the stale file is replaced
    (out / "data.csv").write_bytes(b"truncated")
    fetch("TESTSET", out, registry=one_file(server.url, "data.csv", sha(PAYLOAD)), retries=0)
    assert (out / "data.csv").read_bytes() == PAYLOAD


def test_retries_are_real(server, tmp_path):
    (server.root / "data.csv").write_bytes(PAYLOAD)
    reg = one_file(server.url, "data.csv", sha(PAYLOAD))
    server.fail["/data.csv"] = 1
    with pytest.raises(DataError, match="failed after 1 attempt"):
        fetch("TESTSET", tmp_path / "a", registry=reg, retries=0)
    assert listing(tmp_path / "a") == []
    server.fail["/data.csv"] = 1
    assert fetch("TESTSET", tmp_path / "b", registry=reg, retries=1)[0].read_bytes() == PAYLOAD
    assert server.gets["/data.csv"] == 3


def test_unreachable_host_names_the_url(tmp_path):
    base = unused_url()
    with pytest.raises(DataError) as err:
        fetch("TESTSET", tmp_path / "out", registry=one_file(base, "data.csv", None), retries=0)
    assert f"{base}/data.csv" in str(err.value)
    assert listing(tmp_path / "out") == []


@pytest.mark.parametrize("layout", ["flat", "TESTSET", "testalias"])
def test_mirror_folder_needs_no_network(tmp_path, layout):
    mirror = tmp_path / "mirror"
    folder = mirror if layout == "flat" else mirror / layout
    folder.mkdir(parents=True)
    (folder / "data.csv").write_bytes(PAYLOAD)
    reg = one_file(unused_url(), "data.csv", sha(PAYLOAD))  # the registry URL would fail
    paths = fetch("TESTSET", tmp_path / "out", mirror=mirror, registry=reg)
    assert paths[0].read_bytes() == PAYLOAD
    assert listing(tmp_path / "out") == ["data.csv"]


def test_mirror_folder_checks_the_hash_and_reports_missing_files(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "data.csv").write_bytes(PAYLOAD + b"tampered\n")
    reg = one_file(unused_url(), "data.csv", sha(PAYLOAD))
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("TESTSET", tmp_path / "out", mirror=mirror, registry=reg)
    assert listing(tmp_path / "out") == []
    with pytest.raises(DataError, match="mirror has no other.csv"):
        fetch("TESTSET", tmp_path / "out", mirror=mirror, registry=one_file("x", "other.csv", None))
    with pytest.raises(DataError, match="mirror folder does not exist"):
        fetch("TESTSET", tmp_path / "out", mirror=tmp_path / "nowhere", registry=reg)


def test_url_mirror(server, tmp_path):
    (server.root / "sub").mkdir()
    (server.root / "sub" / "data.csv").write_bytes(PAYLOAD)
    reg = one_file(unused_url(), "data.csv", sha(PAYLOAD))
    paths = fetch("TESTSET", tmp_path / "out", mirror=f"{server.url}/sub/", registry=reg, retries=0)
    assert paths[0].read_bytes() == PAYLOAD
    assert server.gets == {"/sub/data.csv": 1}


def test_gzip_entry_is_decompressed_and_unknown_hash_is_recorded(server, tmp_path, caplog):
    packed = gzip.compress(OTHER)
    (server.root / "msgs.txt.gz").write_bytes(packed)
    out = tmp_path / "out"
    reg = one_file(server.url, "msgs.txt.gz", None, gz=True)
    with caplog.at_level(logging.WARNING, logger="disttgl.data.fetch"):
        paths = fetch("TESTSET", out, registry=reg, retries=0)
    assert paths == [out / "msgs.txt"]
    assert paths[0].read_bytes() == OTHER
    assert listing(out) == ["msgs.txt", "msgs.txt.gz", "msgs.txt.gz.sha256"]
    assert (out / "msgs.txt.gz.sha256").read_text().split()[0] == sha(packed)
    assert "no sha256" in caplog.text
    # the recorded hash pins later runs: a changed upstream file is refused
    (out / "msgs.txt.gz").unlink()
    (out / "msgs.txt").unlink()
    (server.root / "msgs.txt.gz").write_bytes(gzip.compress(OTHER + b"4 5 13\n"))
    with pytest.raises(DataError, match="recorded in .*msgs.txt.gz.sha256"):
        fetch("TESTSET", out, registry=reg, retries=0)
    assert listing(out) == ["msgs.txt.gz.sha256"]


def test_gzip_decompressed_again_when_missing(server, tmp_path):
    (server.root / "msgs.txt.gz").write_bytes(gzip.compress(OTHER))
    reg = one_file(server.url, "msgs.txt.gz", sha(gzip.compress(OTHER)), gz=True)
    out = tmp_path / "out"
    fetch("TESTSET", out, registry=reg)
    (out / "msgs.txt").unlink()
    server.stop()
    assert fetch("TESTSET", out, registry=reg)[0].read_bytes() == OTHER


def test_corrupt_gzip_leaves_nothing(server, tmp_path):
    (server.root / "msgs.txt.gz").write_bytes(b"this is not gzip data")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not a valid gzip"):
        fetch("TESTSET", out, registry=one_file(server.url, "msgs.txt.gz", None, gz=True), retries=0)
    assert listing(out) == []


def test_synthetic_has_nothing_to_download(tmp_path, capsys):
    assert fetch("synthetic", tmp_path / "out") == []
    assert main(["fetch", "Synthetic", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == ""


def test_unknown_dataset(tmp_path, capsys):
    with pytest.raises(DataError, match="unknown dataset 'no-such-set'"):
        fetch("no-such-set", tmp_path)
    assert main(["fetch", "no-such-set", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "no-such-set" in err and "WIKI" in err
    assert not (tmp_path / "out").exists()


def test_cli(server, tmp_path, monkeypatch, capsys):
    (server.root / "data.csv").write_bytes(PAYLOAD)
    monkeypatch.setattr(disttgl.data.registry, "DATASETS", one_file(unused_url(), "data.csv", sha(PAYLOAD)))
    out = tmp_path / "out"
    assert main(["fetch", "testalias", "--out", str(out), "--mirror", server.url, "--retries", "0"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "data.csv")]
    assert (out / "data.csv").read_bytes() == PAYLOAD
    # checksum mismatch through the CLI: non-zero exit, message names the file, nothing left
    monkeypatch.setattr(disttgl.data.registry, "DATASETS", one_file(server.url, "data.csv", "2" * 64))
    bad = tmp_path / "bad"
    assert main(["fetch", "TESTSET", "--out", str(bad), "--retries", "0"]) == 2
    assert "data.csv" in capsys.readouterr().err
    assert listing(bad) == []
    assert main(["fetch", "TESTSET", "--out", str(bad), "--retries", "-1"]) == 2


SHARED = Path(__file__).parents[2] / "shared" / "datasets"


def test_fetch_then_convert_collegemsg(server, tmp_path, capsys):
    """The real UCI entry end to end: gzipped file from a URL mirror, then `disttgl convert`."""
    raw = SHARED / "collegemsg" / "CollegeMsg.txt"
    if not raw.exists():
        pytest.skip(f"{raw} not present (real datasets live in ../shared/datasets)")
    pytest.importorskip("disttgl.data.convert")
    (server.root / "CollegeMsg.txt.gz").write_bytes(gzip.compress(raw.read_bytes()))
    out = tmp_path / "raw"
    assert main(["fetch", "collegemsg", "--out", str(out), "--mirror", server.url, "--retries", "0"]) == 0
    assert (out / "CollegeMsg.txt").read_bytes() == raw.read_bytes()
    graph = tmp_path / "graph.h5"
    assert main(["convert", *disttgl.data.registry.convert_arguments("uci", out), "--out", str(graph)]) == 0
    capsys.readouterr()
    assert main(["info", str(graph), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["num_events"], info["num_nodes"], info["bipartite"]) == (59_835, 1_899, False)


@pytest.mark.parametrize("name, published", [("bitcoin-otc", "soc-sign-bitcoinotc.csv.gz"),
                                             ("bitcoinalpha", "soc-sign-bitcoinalpha.csv.gz")])
def test_fetch_then_convert_a_bitcoin_signed_network(server, tmp_path, capsys, name, published):
    """The Bitcoin entries end to end on a file in SNAP's layout (SOURCE,TARGET,RATING,TIME, 1-based ids,
    ratings -10..10, unix seconds): gzipped from a URL mirror, then `disttgl convert` with the registry's
    arguments; the time is told from the rating by the values and the rating is the edge feature."""
    rng = np.random.default_rng(1)
    n = 400
    src, dst = rng.integers(1, 60, n), rng.integers(1, 60, n)
    rating = rng.choice([-10, -1, 1, 2, 5, 10], n)
    t = np.sort(rng.integers(1_289_000_000, 1_454_000_000, n))
    text = "".join(f"{a},{b},{r},{c}\n" for a, b, r, c in zip(src, dst, rating, t))
    (server.root / published).write_bytes(gzip.compress(text.encode()))
    out = tmp_path / "raw"
    assert main(["fetch", name, "--out", str(out), "--mirror", server.url, "--retries", "0"]) == 0
    graph = tmp_path / "graph.h5"
    assert main(["convert", *disttgl.data.registry.convert_arguments(name, out), "--out", str(graph)]) == 0
    g = load_graph(graph)
    assert g.num_events == n and g.edge_dim == 1 and not g.bipartite
    np.testing.assert_array_equal(g.t, t.astype(np.float64))  # the TIME column, not the rating
    np.testing.assert_array_equal(np.sort(g.edge_feat[:-1, 0]), np.sort(rating.astype(np.float32)))
