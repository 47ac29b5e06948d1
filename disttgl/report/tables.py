"""``disttgl report``: collect run directories into accuracy/ablation tables and plots.

Pipeline: ``collect`` (run dirs -> ``RunResult``, never raising for a broken run) -> ``accuracy_rows`` /
``ablation_rows`` (pure) -> ``render_*`` (pure strings) -> ``write_report`` (atomic files). A run that
was expected but has no summary, or whose summary cannot be read, stays in every table as
missing/failed so a crashed job is visible instead of silently dropped.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import logging
import math
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

from disttgl.atomic import atomic_path
from disttgl.errors import DataError

log = logging.getLogger(__name__)

RUN_FILES = ("summary.json", "metrics.jsonl", "checkpoint.pt")
_PAR_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
DEFAULT_TTA_FRACTION = 0.98


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
        return max(vals) if vals else _num(self.summary.get("val_mrr"))

    @property
    def is_parallel(self) -> bool:
        """A distributed i x j x k run: its metrics and best_epoch count passes, each j·k epochs."""
        return self.parallelism is not None and self.parallelism != (1, 1, 1)

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
        busy, cpus, load = _num(m.get("other_cores_busy_max")), m.get("cpu_count"), _num(m.get("load_avg_max"))
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


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_parallelism(value: Any) -> tuple[int, int, int] | None:
    m = _PAR_RE.match(str(value).strip()) if value is not None else None
    return tuple(int(g) for g in m.groups()) if m else None  # type: ignore[return-value]


# --------------------------------------------------------------------------- collect

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
        sec = _num(rec.get("seconds")) or 0.0
        cum += sec
        trained = rec.get("epochs_trained")
        trained = trained if isinstance(trained, int) and not isinstance(trained, bool) else ep
        epochs.append(Epoch(ep, trained, _num(rec.get("val_mrr")), _num(rec.get("val_ap")), sec, cum))
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
            for key in ("test_mrr", "test_ap"):
                if _num(summary.get(key)) is None:
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


# --------------------------------------------------------------------------- tables (pure)

ACCURACY_COLUMNS = [
    # (csv name, display header)
    ("dataset", "dataset"), ("run", "run"), ("status", "status"), ("parallelism", "i x j x k"),
    ("trainers", "trainers"), ("static_memory", "static memory"),
    # single-process runs count epochs; a parallel run's metrics count passes of j·k epochs each
    ("best_epoch", "best epoch"), ("best_pass", "best pass"), ("epochs_to_best", "epochs trained to best"),
    ("test_mrr", "test MRR@49"), ("test_ap", "test AP"), ("test_ap_1neg", "test AP (1 neg)"),
    ("best_val_mrr", "best val MRR"), ("time_to_best_s", "time to best val MRR (s)"),
    ("train_events_per_s", "train events/s"), ("speedup_events_per_s", "events/s speed-up"),
    ("time_to_target_s", "time to target (s)"), ("speedup_tta", "time-to-accuracy speed-up"),
    ("contended", "cores shared"), ("note", "note"),
]


def baseline_for(run: RunResult, runs: Sequence[RunResult]) -> RunResult | None:
    """The 1x1x1 run of the same dataset and static setting (the one named ``1x1x1`` first)."""
    cands = [r for r in runs if r.status == "ok" and r.dataset == run.dataset and r.static == run.static
             and r.parallelism == (1, 1, 1)]
    cands.sort(key=lambda r: (r.run != "1x1x1", r.run))
    return cands[0] if cands else None


def accuracy_rows(runs: Sequence[RunResult], tta_fraction: float = DEFAULT_TTA_FRACTION) -> list[dict]:
    """One row per run. Speed-ups are over the 1x1x1 run of the same dataset and static setting;
    time-to-accuracy uses the target ``tta_fraction`` x the baseline's best validation MRR."""
    rows = []
    for r in runs:
        s = r.summary
        row = {k: None for k, _ in ACCURACY_COLUMNS}
        row.update(dataset=r.dataset, run=r.run, status=r.status, note=r.reason,
                   parallelism=None if r.parallelism is None else r.par_label, trainers=r.trainers,
                   static_memory=None if r.static is None else ("yes" if r.static else "no"))
        if r.status == "ok":
            be = s.get("best_epoch")
            be = be if isinstance(be, int) and not isinstance(be, bool) else None
            row.update(best_epoch=None if r.is_parallel else be, best_pass=be if r.is_parallel else None,
                       epochs_to_best=r.best_epochs_trained,
                       test_mrr=_num(s.get("test_mrr")), test_ap=_num(s.get("test_ap")),
                       test_ap_1neg=_num(s.get("test_ap_1neg")), best_val_mrr=r.best_val_mrr,
                       time_to_best_s=r.time_to_best, train_events_per_s=_num(s.get("train_events_per_s")),
                       contended={True: "yes", False: "no", None: "load not recorded"}[r.contended])
            notes = [r.reason, r.contention_note()]
            base = baseline_for(r, runs)
            # A speed-up is a ratio of two speeds: neither may have been measured on shared cores.
            refuse = r.contended or (base is not None and base.contended)
            if base is not None and base.contended and base is not r:
                notes.append(f"no speed-up: its 1x1x1 baseline {base.run} was measured on shared cores")
            if base is not None:
                b_eps = _num(base.summary.get("train_events_per_s"))
                if b_eps and row["train_events_per_s"] is not None and not refuse:
                    row["speedup_events_per_s"] = row["train_events_per_s"] / b_eps
                if base.best_val_mrr is not None:
                    target = tta_fraction * base.best_val_mrr
                    row["time_to_target_s"] = mine = r.time_to(target)
                    theirs = base.time_to(target)
                    if mine and theirs and not refuse:
                        row["speedup_tta"] = theirs / mine
            row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
    return rows


ABLATION_COLUMNS = [
    ("dataset", "dataset"), ("parallelism", "i x j x k"), ("run_static", "run (static)"),
    ("run_nostatic", "run (no static)"), ("test_mrr_static", "test MRR@49 static"),
    ("test_mrr_nostatic", "test MRR@49 no static"), ("delta_mrr", "Δ MRR"),
    ("test_ap_static", "test AP static"), ("test_ap_nostatic", "test AP no static"), ("delta_ap", "Δ AP"),
]


def ablation_rows(runs: Sequence[RunResult]) -> list[dict]:
    """With vs without static memory, per dataset and parallelism where runs of both settings exist.
    A run without a readable summary has no known setting, so it only appears in the accuracy table."""
    groups: dict[tuple[str, str], dict[bool, RunResult]] = {}
    for r in runs:
        if r.static is None:
            continue
        side = groups.setdefault((r.dataset, r.par_label), {})
        side.setdefault(r.static, r)
    rows = []
    for (dataset, par), side in sorted(groups.items()):
        if len(side) < 2:
            continue
        st, ns = side[True], side[False]
        row = dict(dataset=dataset, parallelism=par, run_static=st.run, run_nostatic=ns.run)
        for key, short in (("test_mrr", "mrr"), ("test_ap", "ap")):
            a, b = _num(st.summary.get(key)), _num(ns.summary.get(key))
            row[f"{key}_static"], row[f"{key}_nostatic"] = a, b
            row[f"delta_{short}"] = None if a is None or b is None else a - b
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- rendering (pure)

_DIGITS = {"test_mrr": 4, "test_ap": 4, "test_ap_1neg": 4, "best_val_mrr": 4, "time_to_best_s": 1,
           "time_to_target_s": 1, "train_events_per_s": 0}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key.startswith("speedup"):
        return f"{value:.2f}x"
    if key.startswith("delta"):
        return f"{value:+.4f}"
    if isinstance(value, float):
        digits = _DIGITS.get(key, 4)
        return f"{value:,.{digits}f}"
    return str(value)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def render_csv(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k for k, _ in columns])
    for row in rows:
        w.writerow([_csv_value(row.get(k)) for k, _ in columns])
    return buf.getvalue()


def _md_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> list[str]:
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [("**" + row[k] + "**" if k == "status" and row[k] != "ok" else _fmt(k, row.get(k)))
                 for k, _ in columns]
        out.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return out


def _by_dataset(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["dataset"], []).append(row)
    return out


def accuracy_notes(tta_fraction: float) -> list[str]:
    return [
        "MRR@49 and AP rank each positive against 49 negatives (ties favour the positive); "
        "AP (1 neg) is TGN-style AP with one negative per positive.",
        "Time to best val MRR: cumulative wall-clock seconds of training and validation up to the best epoch.",
        "Speed-ups are over the 1x1x1 run of the same dataset and static-memory setting: events/s ratio, "
        f"and time-to-accuracy ratio with the target {tta_fraction:g} x that run's best validation MRR "
        "(— where a run never reaches it).",
        "Best epoch / best pass: a single-process run's metrics count epochs; a parallel i x j x k run's "
        "count passes, each training j·k epochs (epochs trained to best = pass·j·k).",
        "Cores shared: whether other processes kept the machine's cores busy while the run was timed "
        "(recorded by the trainer; 'load not recorded' for older runs). No speed-up is computed from a "
        "speed measured on shared cores, the run's own or its baseline's.",
        "Runs marked missing or failed were expected but have no readable summary.json.",
    ]


def render_markdown(acc: Sequence[dict], abl: Sequence[dict], tta_fraction: float,
                    machine: dict[str, str] | None = None) -> str:
    cols = [c for c in ACCURACY_COLUMNS if c[0] != "dataset"]
    lines = ["# Accuracy and speed", ""]
    for dataset, rows in _by_dataset(acc).items():
        lines += [f"## {dataset}", "", *_md_table(rows, cols), ""]
    if not acc:
        lines += ["No runs found.", ""]
    lines += [f"- {n}" for n in accuracy_notes(tta_fraction)] + [""]
    lines += ["# Static memory ablation", ""]
    lines += (_md_table(abl, ABLATION_COLUMNS) if abl else ["No dataset has runs both with and without static memory."])
    lines.append("")
    if machine:
        lines += ["# Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()] + [""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0 0 1.5em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:0.3em 0.6em;text-align:right}
th{background:#eef}td.t{text-align:left}tr.missing td,tr.failed td{background:#fdd;color:#900}
caption{text-align:left;font-weight:bold;padding:0.3em 0}"""


TEXT_CLASS = ' class="t"'


def _html_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], caption: str) -> list[str]:
    text_cols = {"dataset", "run", "status", "parallelism", "static_memory", "note", "contended", "run_static",
                 "run_nostatic"}
    out = [f"<table><caption>{html.escape(caption)}</caption>",
           "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for _, h in columns) + "</tr>"]
    for row in rows:
        cls = f' class="{row["status"]}"' if row.get("status") in ("missing", "failed") else ""
        cells = "".join(f'<td{TEXT_CLASS if k in text_cols else ""}>{html.escape(_fmt(k, row.get(k)))}</td>'
                        for k, _ in columns)
        out.append(f"<tr{cls}>{cells}</tr>")
    return out + ["</table>"]


def render_html(acc: Sequence[dict], abl: Sequence[dict], tta_fraction: float,
                machine: dict[str, str] | None = None) -> str:
    cols = [c for c in ACCURACY_COLUMNS if c[0] != "dataset"]
    body = ["<h1>Accuracy and speed</h1>"]
    for dataset, rows in _by_dataset(acc).items():
        body += _html_table(rows, cols, dataset)
    if not acc:
        body.append("<p>No runs found.</p>")
    body += ["<ul>"] + [f"<li>{html.escape(n)}</li>" for n in accuracy_notes(tta_fraction)] + ["</ul>"]
    body.append("<h2>Static memory ablation</h2>")
    body += (_html_table(abl, ABLATION_COLUMNS, "with vs without static memory") if abl
             else ["<p>No dataset has runs both with and without static memory.</p>"])
    if machine:
        body += ["<h2>Machine</h2>", "<ul>"]
        body += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in machine.items()] + ["</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>disttgl report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- machine

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


# --------------------------------------------------------------------------- files

OUTPUTS = ("accuracy.md", "accuracy.csv", "accuracy.html", "convergence.svg", "scaling.svg",
           "static_ablation.svg", "static_ablation.md", "static_ablation.csv")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(runs: Sequence[RunResult], out: str | os.PathLike, tta_fraction: float = DEFAULT_TTA_FRACTION,
                 machine: dict[str, str] | None = None) -> list[Path]:
    """Write every report file into ``out``; returns their paths (``OUTPUTS`` order)."""
    from disttgl.report import plots  # matplotlib only when figures are drawn

    out = Path(out)
    acc, abl = accuracy_rows(runs, tta_fraction), ablation_rows(runs)
    _write_text(out / "accuracy.md", render_markdown(acc, abl, tta_fraction, machine))
    _write_text(out / "accuracy.csv", render_csv(acc, ACCURACY_COLUMNS))
    _write_text(out / "accuracy.html", render_html(acc, abl, tta_fraction, machine))
    plots.save(plots.convergence_figure(runs), out / "convergence.svg")
    plots.save(plots.scaling_figure(runs, acc), out / "scaling.svg")
    plots.save(plots.ablation_figure(abl), out / "static_ablation.svg")
    abl_md = ["# Static memory ablation", ""] + (_md_table(abl, ABLATION_COLUMNS) if abl else
                                                 ["No dataset has runs both with and without static memory."])
    _write_text(out / "static_ablation.md", "\n".join(abl_md) + "\n")
    _write_text(out / "static_ablation.csv", render_csv(abl, ABLATION_COLUMNS))
    return [out / name for name in OUTPUTS]


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS_DIR",
                        help="run directories, dataset directories of runs, or a results root")
    parser.add_argument("--out", required=True, help="directory for the tables and plots")
    parser.add_argument("--expect", nargs="*", default=[], metavar="DATASET/RUN",
                        help="runs that must appear; those not found are listed as missing")
    parser.add_argument("--tta-fraction", type=float, default=DEFAULT_TTA_FRACTION,
                        help="time-to-accuracy target as a fraction of the 1x1x1 run's best val MRR "
                             f"(default {DEFAULT_TTA_FRACTION})")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.tta_fraction <= 1:
        raise DataError(None, f"--tta-fraction {args.tta_fraction}: must be in (0, 1]")
    runs = collect(args.results, parse_expect(args.expect))
    if not runs:
        raise DataError(args.results[0], "no run directories found (each holds summary.json or metrics.jsonl)")
    for r in runs:
        if r.status != "ok":
            log.warning("%s/%s: %s (%s)", r.dataset, r.run, r.status, r.reason)
    paths = write_report(runs, args.out, args.tta_fraction, machine_info(runs))
    ok = sum(r.status == "ok" for r in runs)
    log.info("report of %d run(s) (%d ok, %d missing/failed) written to %s: %s", len(runs), ok,
             len(runs) - ok, args.out, ", ".join(p.name for p in paths))
    return 0
