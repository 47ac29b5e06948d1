"""Reading results: run directories -> :class:`RunResult` (never raising for a broken run), and the
machine writing the report. The first step of ``disttgl report`` (see :mod:`disttgl.report`).

A run that was expected but has no summary, or whose summary cannot be read, is kept as
missing/failed so a crashed job stays visible in every table instead of being silently dropped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

from disttgl.errors import DataError

RUN_FILES = ("summary.json", "metrics.jsonl", "checkpoint.pt")
_PAR_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


@dataclass(frozen=True)
class Epoch:
    epoch: int
    epochs_trained: int  # data epochs covered: a parallel pass counts j·k (the trainer logs it)
    val_mrr: float | None
    val_ap: float | None
    seconds: float  # wall time of this epoch
    cum_seconds: float  # wall time up to and including this epoch


@dataclass
class RunResult:
    dataset: str
    run: str
    status: str  # "ok" | "missing" | "failed"
    reason: str = ""
    path: str | None = None
    parallelism: tuple[int, int, int] | None = None
    world_size: int | None = None
    static: bool | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    epochs: list[Epoch] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.run)

    @property
    def par_label(self) -> str:
        return "?" if self.parallelism is None else "x".join(map(str, self.parallelism))

    @property
    def trainers(self) -> int | None:
        if self.world_size is not None:
            return self.world_size
        return None if self.parallelism is None else math.prod(self.parallelism)

    @property
    def best_val_mrr(self) -> float | None:
        best = _epoch_row(self.epochs, self.summary.get("best_epoch"))
        if best is not None and best.val_mrr is not None:
            return best.val_mrr
        vals = [e.val_mrr for e in self.epochs if e.val_mrr is not None]
        return max(vals) if vals else finite_number(self.summary.get("val_mrr"))

    @property
    def task(self) -> str:
        """``link`` or ``edge-class`` (what summary.json records; a run without one predicts links)."""
        cfg = self.summary.get("config") if isinstance(self.summary.get("config"), dict) else {}
        return str(self.summary.get("task") or cfg.get("task") or "link")

    @property
    def is_parallel(self) -> bool:
        """A distributed i x j x k run: its metrics and best_epoch count passes, each j·k epochs."""
        return self.parallelism is not None and self.parallelism != (1, 1, 1)

    @property
    def is_snapshot(self) -> bool:
        """A snapshot DGNN run (``disttgl snapshot-train``, docs/design.md §11): its summary names the
        cut (``num_snapshots``, ``edge_life``). The report gives these runs a section of their own, so
        no TGN run is compared with one (speed-up baseline, static-memory ablation)."""
        s = self.summary
        return all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("num_snapshots", "edge_life"))

    @property
    def is_tma(self) -> bool:
        """A RandomTMA/SuperTMA run (``disttgl tma``, docs/design.md §14): its summary counts rounds and
        its config names the partition method. Kept out of the TGN sections as snapshot runs are."""
        cfg = self.summary.get("config") if isinstance(self.summary.get("config"), dict) else {}
        return self.summary.get("unit") == "round" and cfg.get("method") in ("random", "super")

    @property
    def kind(self) -> str:
        """``snapshot``, ``tma`` or ``tgn`` (every other run: the accuracy, ablation, batch and staleness
        sections compare these only)."""
        return "snapshot" if self.is_snapshot else "tma" if self.is_tma else "tgn"

    @property
    def best_epochs_trained(self) -> int | None:
        """Data epochs trained up to the best epoch (single process) or pass (pass·j·k)."""
        be = self.summary.get("best_epoch")
        if not isinstance(be, int) or isinstance(be, bool):
            return None
        row = _epoch_row(self.epochs, be)
        if row is not None:
            return row.epochs_trained
        return be * self.parallelism[1] * self.parallelism[2] if self.is_parallel else be

    @property
    def machine(self) -> dict[str, Any] | None:
        """The trainer's load record (summary.json "machine"); None for runs that did not record it."""
        m = self.summary.get("machine")
        return m if isinstance(m, dict) and isinstance(m.get("contended"), bool) else None

    @property
    def contended(self) -> bool | None:
        """Whether other processes used the cores while this run was timed (None: not recorded)."""
        return None if self.machine is None else self.machine["contended"]

    def contention_note(self) -> str:
        m = self.machine
        if not m or not m["contended"]:
            return ""
        # the fields disttgl.train.machine_load.summarize writes
        busy, cpus, load = finite_number(m.get("other_cores_busy_max")), m.get("cpu_count"), finite_number(m.get("load_avg_max"))
        used = "?" if busy is None else f"{busy:.1f}"
        of = f" of {cpus}" if isinstance(cpus, int) and not isinstance(cpus, bool) else ""
        peak = "" if load is None else f", load up to {load:.1f}"
        return f"speed measured while other processes used {used}{of} cores{peak}: not a measurement"

    @property
    def time_to_best(self) -> float | None:
        best = _epoch_row(self.epochs, self.summary.get("best_epoch"))
        return None if best is None else best.cum_seconds

    def time_to(self, target: float) -> float | None:
        """Wall-clock seconds until the first epoch whose validation MRR reaches ``target``."""
        return next((e.cum_seconds for e in self.epochs if e.val_mrr is not None and e.val_mrr >= target), None)


def _epoch_row(epochs: Sequence[Epoch], epoch: Any) -> Epoch | None:
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    return next((e for e in epochs if e.epoch == epoch), None)


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_parallelism(value: Any) -> tuple[int, int, int] | None:
    """``"2x1x1"`` -> (2, 1, 1); anything else (a run named ``static``, ``2``, ``2x1``...) -> None.

    Not :meth:`disttgl.parallel.schedule.Layout.parse`: that one also reads ``2`` and ``2x1`` as
    layouts (so a run directory named ``2`` would be taken for 2x1x1), and raises instead of saying
    "not a layout". Here a name is a layout only when it spells all three factors."""
    m = _PAR_RE.match(str(value).strip()) if value is not None else None
    return tuple(int(g) for g in m.groups()) if m else None  # type: ignore[return-value]


def read_metrics(path: Path) -> tuple[list[Epoch], str]:
    """Parse metrics.jsonl; unreadable lines are skipped and reported in the returned note."""
    rows: dict[int, dict] = {}
    bad: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                epoch = rec["epoch"]
                if not isinstance(epoch, int):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                bad.append(lineno)
                continue
            rows[epoch] = rec  # a resumed run may repeat an epoch: the last record wins
    epochs, cum = [], 0.0
    for ep in sorted(rows):
        rec = rows[ep]
        sec = finite_number(rec.get("seconds")) or 0.0
        cum += sec
        trained = rec.get("epochs_trained")
        trained = trained if isinstance(trained, int) and not isinstance(trained, bool) else ep
        epochs.append(Epoch(ep, trained, finite_number(rec.get("val_mrr")), finite_number(rec.get("val_ap")), sec, cum))
    note = f"{path.name}: skipped unreadable line(s) {', '.join(map(str, bad))}" if bad else ""
    return epochs, note


def load_run(run_dir: str | os.PathLike, dataset: str | None = None, run: str | None = None) -> RunResult:
    """Read one run directory. Never raises for a missing or broken run: the status says what happened."""
    d = Path(run_dir)
    res = RunResult(dataset or d.parent.name, run or d.name, "ok", path=str(d),
                    parallelism=parse_parallelism(run or d.name))
    if not d.is_dir():
        res.status, res.reason = "missing", "run directory not found"
        return res
    notes = []
    if (d / "metrics.jsonl").is_file():
        try:
            res.epochs, note = read_metrics(d / "metrics.jsonl")
            notes.append(note)
        except (OSError, UnicodeDecodeError) as exc:
            notes.append(f"metrics.jsonl unreadable ({exc})")
    summary_path = d / "summary.json"
    if not summary_path.is_file():
        res.status = "missing"
        notes.insert(0, "summary.json not found (run unfinished or failed)")
    else:
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
            cfg = summary.get("config") if isinstance(summary.get("config"), dict) else {}
            edge_class = (summary.get("task") or cfg.get("task")) == "edge-class"
            for key in ("test_f1_micro", "test_f1_macro") if edge_class else ("test_mrr", "test_ap"):
                if finite_number(summary.get(key)) is None:
                    raise ValueError(f"key {key!r} missing or not a number")
            res.summary = summary
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            res.status = "failed"
            notes.insert(0, f"summary.json unreadable: {exc}")
    cfg = res.summary.get("config") if isinstance(res.summary.get("config"), dict) else {}
    if res.status == "ok":
        # Keys are optional: a single-process run may not record its (trivial) parallelism, and
        # records its static memory as the path `static` rather than the flag `static_memory`.
        par = cfg.get("parallelism", res.summary.get("parallelism"))
        res.parallelism = parse_parallelism(par) or res.parallelism or (1, 1, 1)
        ws = cfg.get("world_size", res.summary.get("world_size"))
        res.world_size = ws if isinstance(ws, int) and not isinstance(ws, bool) and ws > 0 else None
        res.static = bool(cfg["static_memory"] if "static_memory" in cfg else cfg.get("static"))
    res.reason = "; ".join(n for n in notes if n)
    return res


def _is_run_dir(d: Path) -> bool:
    return any((d / f).exists() for f in RUN_FILES)


def find_run_dirs(path: str | os.PathLike) -> list[Path]:
    """Run directories under ``path``: a run dir itself, a dataset dir, or a results root."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "results directory not found")
    if _is_run_dir(root):
        return [root]
    children = sorted(c for c in root.iterdir() if c.is_dir())
    runs = [c for c in children if _is_run_dir(c)]
    if runs:
        return runs
    return [g for c in children for g in sorted(x for x in c.iterdir() if x.is_dir()) if _is_run_dir(g)]


def parse_expect(items: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        parts = item.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise DataError(None, f"--expect {item!r}: expected DATASET/RUN")
        out.append((parts[0], parts[1]))
    return out


def collect(paths: Sequence[str | os.PathLike], expect: Sequence[tuple[str, str]] = ()) -> list[RunResult]:
    """All runs found under ``paths`` plus every expected (dataset, run) not found (as missing)."""
    found: dict[tuple[str, str], RunResult] = {}
    for p in paths:
        for d in find_run_dirs(p):
            res = load_run(d)
            found.setdefault(res.key, res)
    for dataset, run in expect:
        if (dataset, run) not in found:
            found[(dataset, run)] = RunResult(dataset, run, "missing", "no run directory found",
                                              parallelism=parse_parallelism(run))
    return sorted(found.values(), key=_sort_key)


def _sort_key(r: RunResult) -> tuple:
    static = {True: 0, False: 1, None: 2}[r.static]
    return (r.dataset, static, r.trainers or 1 << 30, r.par_label, r.run)


def machine_info(runs: Sequence[RunResult] = ()) -> dict[str, str]:
    """The machine writing the report (the training machine on a workstation) and the devices runs recorded."""
    info = {"host": platform.node(), "platform": platform.platform(), "logical CPUs": str(os.cpu_count())}
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                   if line.startswith("model name"))
        info["CPU"] = cpu
    except (OSError, StopIteration):
        info["CPU"] = platform.processor() or "unknown"
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo", encoding="utf-8")
                  if line.startswith("MemTotal"))
        info["memory"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    versions = []
    for pkg in ("disttgl", "torch", "snakemake"):
        try:
            versions.append(f"{pkg} {importlib_metadata.version(pkg)}")
        except importlib_metadata.PackageNotFoundError:
            pass
    info["software"] = ", ".join([f"Python {platform.python_version()}", *versions])
    devices = sorted({str(r.summary["config"].get("device")) for r in runs if r.status == "ok"
                      and isinstance(r.summary.get("config"), dict) and r.summary["config"].get("device")})
    if devices:
        info["training devices (recorded)"] = ", ".join(devices)
    return info
