"""The graph store is checked when opened: checksums, layout and invariants; damage is a DataError."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from disttgl.cli import main
from disttgl.errors import DataError
from disttgl.data.graph_store import graph_info, load_graph, load_tcsr, read_attrs, write_graph
from disttgl.data.synth import SynthConfig, generate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "graph.h5"
    write_graph(generate(SynthConfig(events=600, nodes=40, edge_dim=3, seed=2)), path)
    return path


@pytest.fixture
def copy(store, tmp_path):
    path = tmp_path / "graph.h5"
    shutil.copy(store, path)
    return path


def _set(path, name, index, value, *, keep_crc=False):
    with h5py.File(path, "r+") as f:
        f[name][index] = value
        if not keep_crc and "crc32" in f[name].attrs:
            # as a store from before checksums, or a writer bug: the invariants must catch it
            del f[name].attrs["crc32"]


def _first_row_with(path, at_least):
    with h5py.File(path) as f:
        indptr = f["tcsr/indptr"][()]
    return int(np.flatnonzero(np.diff(indptr) >= at_least)[0]), indptr


def test_valid_store_loads_and_checks(store):
    from disttgl.data.graph_store import check_graph

    g = load_graph(store)
    check_graph(g, store)
    load_graph(store, features=False)
    load_tcsr(store)
    assert read_attrs(store)["num_events"] == 600 and graph_info(store)["num_events"] == 600


def test_store_without_checksums_still_reads(copy):
    with h5py.File(copy, "r+") as f:
        f.visititems(lambda name, obj: obj.attrs.__delitem__("crc32") if "crc32" in obj.attrs else None)
    assert load_graph(copy).num_events == 600


CORRUPTIONS = {
    "negative_src": ("events/src", 7, -3, "events/src[7] is -3, node ids must lie in [0, 40)"),
    "dst_too_large": ("events/dst", 9, 40, "events/dst[9] is 40, node ids must lie in [0, 40)"),
    "nan_time": ("events/t", 11, np.nan, "events/t[11] is nan, times must be finite"),
    "unsorted_time": ("events/t", 0, 1e12, "events/t is not sorted: t[1]"),
    "split_value": ("events/split", 5, 3, "events/split[5] is 3"),
    "split_back_in_time": ("events/split", 599, 0, "events/split goes back from 2 to 0 at event 599"),
    "sentinel_row": ("edge_feat", (600, 1), 1.0, "the last row of edge_feat"),
    "indptr": ("tcsr/indptr", 5, -1, "tcsr/indptr is not a non-decreasing run from 0 to 1200"),
    "nbr": ("tcsr/nbr", 3, 99, "tcsr/nbr[3] is 99, node ids must lie in [0, 40)"),
    "eid": ("tcsr/eid", 4, -1, "tcsr/eid[4] is -1, event ids must lie in [0, 600)"),
    "tcsr_time": ("tcsr/t", 6, -5.0, "tcsr/t"),
    "side": ("node_map/side", 2, 7, "node_map/side holds values other than 0 and 1"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_invariant_violation_reported(copy, case):
    name, index, value, message = CORRUPTIONS[case]
    if case == "side":
        with h5py.File(copy, "r+") as f:
            f["node_map"].create_dataset("side", data=np.zeros(40, np.int8))
    _set(copy, name, index, value)
    with pytest.raises(DataError) as exc:
        load_graph(copy)
    assert exc.value.path == str(copy)
    assert message in exc.value.problem and "corrupt graph store" in exc.value.problem
    assert "disttgl convert" in exc.value.problem  # says how to get a good one


def test_unsorted_row_of_the_tcsr(copy):
    row, indptr = _first_row_with(copy, 2)
    with h5py.File(copy, "r+") as f:
        a, b = indptr[row], indptr[row] + 1
        for name in ("tcsr/t", "tcsr/eid", "tcsr/nbr"):  # swap two entries consistently
            x = f[name][()]
            x[[a, b]] = x[[b, a]]
            f[name][...] = x
            if "crc32" in f[name].attrs:
                del f[name].attrs["crc32"]
    with h5py.File(copy) as f:
        tied = f["tcsr/t"][a] == f["tcsr/t"][b]
    if tied:
        pytest.skip("the two entries share a timestamp")
    with pytest.raises(DataError, match=f"tcsr/t is not sorted within node {row}'s row"):
        load_graph(copy)


def test_changed_bytes_fail_the_checksum(copy):
    """A change that keeps every invariant (a node id still in range) is caught by the checksum."""
    with h5py.File(copy) as f:
        v = int(f["events/src"][10])
    _set(copy, "events/src", 10, (v + 1) % 40, keep_crc=True)
    with pytest.raises(DataError, match="events/src fails its checksum"):
        load_graph(copy)


def test_shape_and_missing_dataset_found_on_every_open(copy):
    with h5py.File(copy, "r+") as f:
        del f["tcsr/eid"]
        f["tcsr"].create_dataset("eid", data=np.zeros(5, np.int64))
    for fn in (load_graph, read_attrs, graph_info, load_tcsr):
        with pytest.raises(DataError, match=r"tcsr/eid has shape \(5,\), expected \(1200,\)"):
            fn(copy)
    with h5py.File(copy, "r+") as f:
        del f["events/t"]
    with pytest.raises(DataError, match="events/t is missing"):
        read_attrs(copy)


def test_info_checks_what_it_reads(copy):
    _set(copy, "events/t", 3, np.inf)
    with pytest.raises(DataError, match="times must be finite"):
        graph_info(copy)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_truncated_or_flipped_file(copy, damage):
    data = bytearray(copy.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        with h5py.File(copy) as f:
            offset = f["tcsr/nbr"].id.get_offset()
        data[offset + 17] ^= 0x40
    copy.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        load_graph(copy)
    assert exc.value.path == str(copy)


def test_random_byte_flips_are_reported_or_harmless(store, tmp_path):
    """No flipped bit escapes as a raw h5py error, nor loads as silently different arrays."""
    data = store.read_bytes()
    good = load_graph(store)
    arrays = ("src", "dst", "t", "split", "edge_feat", "original_id")
    rng = np.random.default_rng(0)
    path = tmp_path / "g.h5"
    for _ in range(40):
        d = bytearray(data)
        pos = int(rng.integers(0, len(d)))
        d[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(d))
        try:
            g = load_graph(path)
        except DataError as exc:
            assert exc.path == str(path)
            continue
        for name in arrays:
            np.testing.assert_array_equal(getattr(g, name), getattr(good, name), err_msg=f"byte {pos}: {name}")
        for name in ("indptr", "nbr", "t", "eid"):
            np.testing.assert_array_equal(getattr(g.tcsr, name), getattr(good.tcsr, name), err_msg=name)


@pytest.mark.parametrize("case", ["negative_src", "nan_time", "indptr"])
def test_batches_cli_refuses_a_corrupt_store(copy, capsys, case):
    name, index, value, message = CORRUPTIONS[case]
    _set(copy, name, index, value)
    out = copy.parent / "cache" / "cache.h5"
    out.parent.mkdir()
    assert main(["batches", str(copy), "--out", str(out), "--no-progress", "--batch-size", "50"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("disttgl batches: error: ") and str(copy) in err and message in err
    assert list(out.parent.iterdir()) == []


def test_batches_cli_refuses_a_truncated_store(copy, capsys):
    copy.write_bytes(copy.read_bytes()[:4000])
    out = copy.parent / "cache.h5"
    assert main(["batches", str(copy), "--out", str(out), "--no-progress"]) == 2
    assert str(copy) in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(not (SHARED / "wikipedia" / "wikipedia.csv").exists(),
                    reason="../shared/datasets/wikipedia is absent")
def test_real_store_passes_the_checks(tmp_path):
    from disttgl.data.convert import ConvertOptions, convert

    for directed in (False, True):
        out = tmp_path / f"wiki{directed}.h5"
        convert([SHARED / "wikipedia" / "wikipedia.csv"], out, ConvertOptions(fmt="jodie", directed=directed))
        assert load_graph(out, features=False).num_events == 157_474
