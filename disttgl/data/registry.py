"""Registry of the known temporal-graph datasets: where their raw files live and how to convert them.

``disttgl datasets [--json]`` prints it. Lookup is case-insensitive and accepts aliases. No sha256 is
invented: a hash is listed only where the published file's hash is known for certain; for the others
``disttgl fetch`` records the hash of the first download next to the file and pins later runs to it.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from disttgl.errors import DataError

from disttgl.data.convert import SPLIT_RULES as SPLITS
from disttgl.data.readers import FORMATS


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a dataset."""

    filename: str  # name as published, and as looked up in a mirror
    url: str
    sha256: str | None = None  # of the published (possibly compressed) file; None where not known
    gzip: bool = False  # decompress after download; the local name drops the ``.gz``
    unzip: tuple[str, ...] = ()  # a zip archive: these members are extracted beside it (flat)

    @property
    def local_name(self) -> str:
        return self.filename.removesuffix(".gz") if self.gzip else self.filename

    @property
    def local_names(self) -> tuple[str, ...]:
        """What the fetch leaves for conversion: the members of an archive, else the one file."""
        return self.unzip or (self.local_name,)


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[RemoteFile, ...]  # empty: generated locally (``disttgl synth``)
    format: str | None  # a `disttgl convert` format; None for generated data
    bipartite: bool
    directed: bool  # directed-only T-CSR (one direction) when true
    split: str  # "chronological" (70/15/15 by time) or "ext_roll" (TGL's own split column)
    description: str
    aliases: tuple[str, ...] = ()
    tgb_name: str | None = None  # the TGB dataset (``--format tgb --tgb-name``)

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"dataset {self.name}: unknown format {self.format!r}")
        if self.split not in SPLITS:
            raise ValueError(f"dataset {self.name}: unknown split rule {self.split!r}")


def _jodie(name: str, stem: str, description: str, aliases: tuple[str, ...] = ()) -> Dataset:
    url = f"http://snap.stanford.edu/jodie/{stem}.csv"
    return Dataset(name, (RemoteFile(f"{stem}.csv", url),), "jodie", bipartite=True, directed=False,
                   split="chronological", description=description, aliases=aliases)


_TGL = "https://s3.us-west-2.amazonaws.com/dgl-data/dataset/tgl"

# TGB's DATA_URL_DICT (tgb/utils/info.py, py-tgb 2.3.0); versions as its DATA_VERSION_DICT
_TGB = "https://object-arbutus.alliancecan.ca/swift/v1/14c95234f6cd4a21a47deafe20cce2a7/tgb"


def _tgb(name: str, version: int, bipartite: bool, description: str, extra: tuple[str, ...] = ()) -> Dataset:
    suffix = "" if version <= 1 else f"_v{version}"
    archive = f"{name}-v{version}.zip" if version > 1 else f"{name}.zip"
    members = (f"{name}_edgelist{suffix}.csv", *extra, f"{name}_val_ns{suffix}.pkl", f"{name}_test_ns{suffix}.pkl")
    return Dataset(name, (RemoteFile(archive, f"{_TGB}/{archive}", unzip=members),), "tgb", bipartite=bipartite,
                   directed=False, split="tgb", description=description,
                   aliases=(name.replace("-", "_"), f"{name}-v{version}"), tgb_name=name)


_ENTRIES = (
    _jodie("WIKI", "wikipedia", "JODIE Wikipedia edits, user -> page, 172-d LIWC edge features",
           ("wikipedia",)),
    _jodie("REDDIT", "reddit", "JODIE Reddit posts, user -> subreddit, 172-d LIWC edge features"),
    _jodie("MOOC", "mooc", "JODIE MOOC actions, student -> course unit, 4-d edge features"),
    _jodie("LASTFM", "lastfm", "JODIE LastFM listening events, user -> song"),
    Dataset("GDELT",
            tuple(RemoteFile(f, f"{_TGL}/GDELT/{f}")
                  # ec_edge_class.pt.pt: DistTGL's multi-label edge classes [E, 52], as its down.sh names
                  # it on S3; the tgl reader takes it as ec_edge_class.pt (docs/design.md §13.1)
                  for f in ("edges.csv", "edge_features.pt", "node_features.pt", "labels.csv",
                            "ec_edge_class.pt.pt")),
            "tgl", bipartite=False, directed=False, split="ext_roll",
            description="GDELT event graph in TGL layout (~191M events, node+edge features, DistTGL's "
                        "multi-label edge classes; large)"),
    Dataset("UCI", (RemoteFile("CollegeMsg.txt.gz", "https://snap.stanford.edu/data/CollegeMsg.txt.gz",
                               gzip=True),),
            # messages are directed, but TGN/TGL sample neighbours in both directions: so do we
            "snap", bipartite=False, directed=False, split="chronological",
            description="SNAP CollegeMsg: messages between UC Irvine students, no features",
            aliases=("collegemsg", "uci-msg")),
    # SNAP's signed trust networks (Kumar et al., 2016), the TM-GCN paper's Bitcoin data: SOURCE,TARGET,
    # RATING (-10..10),TIME; the snap reader takes the time column from the values and keeps the rating
    # as the edge feature (the sign a signed-network model reads)
    *(Dataset(f"BITCOIN-{k.upper()}", (RemoteFile(f"soc-sign-bitcoin{k}.csv.gz",
                                                   f"https://snap.stanford.edu/data/soc-sign-bitcoin{k}.csv.gz",
                                                   gzip=True),),
              "snap", bipartite=False, directed=False, split="chronological",
              description=f"SNAP Bitcoin {title} who-trusts-whom: {n} signed ratings (-10..10, the edge feature)",
              aliases=(f"bitcoin{k}", f"soc-sign-bitcoin{k}"))
      for k, title, n in (("otc", "OTC", "35,592"), ("alpha", "Alpha", "24,186"))),
    Dataset("synthetic", (), None, bipartite=False, directed=False, split="chronological",
            description="embedded seeded generator with planted temporal structure (disttgl synth)",
            aliases=("synth",)),
    _tgb("tgbl-wiki", 2, True, "TGB tgbl-wiki v2: Wikipedia edits with TGB's ids, split and all-destination "
                               "negatives (TGB MRR)"),
    _tgb("tgbl-review", 2, False, "TGB tgbl-review v2: Amazon reviews, log2 weight feature, 100 negatives"),
    _tgb("tgbl-coin", 2, False, "TGB tgbl-coin v2: stablecoin transfers, log2 weight feature, 20 negatives"),
    _tgb("tgbl-comment", 1, False, "TGB tgbl-comment: Reddit replies, [words/5000, score] features, 20 negatives"),
    _tgb("tgbl-flight", 2, False, "TGB tgbl-flight v2: flights between airports, callsign/typecode edge features, "
                                  "airport node features, 20 negatives", extra=("airport_node_feat_v2.csv",)),
)

DATASETS: Mapping[str, Dataset] = MappingProxyType({d.name: d for d in _ENTRIES})


def get_dataset(name: str, registry: Mapping[str, Dataset] | None = None) -> Dataset:
    """Look a dataset up by name or alias, case-insensitively."""
    registry = DATASETS if registry is None else registry
    key = name.strip().lower()
    for d in registry.values():
        if key == d.name.lower() or key in (a.lower() for a in d.aliases):
            return d
    raise DataError(None, f"unknown dataset {name!r}; known: {', '.join(registry)}")


def raw_paths(name: str, raw_dir: str | os.PathLike,
              registry: Mapping[str, Dataset] | None = None) -> list[Path]:
    """The files ``disttgl fetch`` leaves in ``raw_dir`` (decompressed names, an archive's members)."""
    return [Path(raw_dir) / n for f in get_dataset(name, registry).files for n in f.local_names]


def convert_arguments(name: str, raw_dir: str | os.PathLike,
                      registry: Mapping[str, Dataset] | None = None) -> list[str]:
    """``disttgl convert`` arguments for a fetched dataset: inputs then format/flags (no ``--out``)."""
    d = get_dataset(name, registry)
    if d.format is None:
        raise DataError(None, f"dataset {d.name!r} is generated by `disttgl synth`, not converted")
    if d.format == "tgb":  # the folder, read with TGB's parser for this dataset
        args = [str(raw_dir), "--format", "tgb", "--tgb-name", str(d.tgb_name)]
    else:
        args = [str(p) for p in raw_paths(name, raw_dir, registry)] + ["--format", d.format]
    # explicit both ways, so convert's per-format default never decides
    args += ["--bipartite" if d.bipartite else "--no-bipartite"] + ["--directed"] * d.directed
    return args + ["--split", d.split]


def describe(d: Dataset) -> dict:
    """JSON-ready description of one entry (files carry their local name too)."""
    out = asdict(d)
    out["aliases"] = list(d.aliases)
    out["files"] = []
    for f in d.files:
        row = {**asdict(f), "local_name": f.local_name}
        if f.unzip:
            row["unzip"] = list(f.unzip)  # an archive's members, extracted beside it
        else:
            del row["unzip"]
        out["files"].append(row)
    if d.tgb_name is None:
        del out["tgb_name"]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON")


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([describe(d) for d in DATASETS.values()], indent=2))
        return 0
    rows = [("name", "format", "bipartite", "directed", "split", "files", "description")]
    for d in DATASETS.values():
        files = ", ".join(f.filename for f in d.files) or "-"
        rows.append((d.name, d.format or "synth", "yes" if d.bipartite else "no",
                     "yes" if d.directed else "no", d.split, files, d.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0
