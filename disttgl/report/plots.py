"""Report figures (matplotlib, no pyplot: figures are plain objects, so no global backend state).

Every plotted series carries a ``gid`` (``<g id=...>`` in the SVG) so tests and scripts can find it;
``save`` pins the SVG hash salt and drops the date so re-running gives byte-identical files.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from disttgl.atomic import atomic_path

if TYPE_CHECKING:
    from disttgl.report.collect import RunResult

_RC = {"svg.hashsalt": "disttgl", "svg.fonttype": "none", "font.size": 9, "axes.grid": True,
       "grid.alpha": 0.3}


def _gid(*parts: object) -> str:
    return "/".join(str(p).replace(" ", "_") for p in parts)


def save(fig: Figure, path: str | os.PathLike) -> None:
    with matplotlib.rc_context(_RC), atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None}, bbox_inches="tight")


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _label(r: RunResult) -> str:
    if r.is_snapshot:
        return f"{r.run} (snapshot {r.summary.get('model', '?')})"
    if r.is_tma:  # its metrics count averaging rounds
        cfg = r.summary["config"]
        return f"{r.run} ({'SuperTMA' if cfg['method'] == 'super' else 'RandomTMA'}, rounds)"
    static = {True: "static", False: "no static", None: "?"}[r.static]
    suffix = "" if r.status == "ok" else f", {r.status}"
    return f"{r.run} ({r.par_label}, {static}{suffix})"


def convergence_figure(runs: Sequence[RunResult]) -> Figure:
    """Validation MRR against wall-clock time (left) and epoch (right); one row per dataset,
    one line per run that logged epochs (an unfinished run's partial curve is drawn dotted)."""
    with matplotlib.rc_context(_RC):
        runs = [r for r in runs if r.task == "link"]  # val MRR: edge classification has its own table
        datasets = sorted({r.dataset for r in runs if r.epochs})
        if not datasets:
            return _empty(Figure(figsize=(6, 2)), "no run logged any epoch")
        fig = Figure(figsize=(10, 3.2 * len(datasets)), layout="constrained")
        axes = fig.subplots(len(datasets), 2, squeeze=False)
        for (ax_t, ax_e), dataset in zip(axes, datasets):
            for n, r in enumerate(x for x in runs if x.dataset == dataset and x.epochs):
                pts = [(e.cum_seconds, e.epochs_trained, e.val_mrr) for e in r.epochs if e.val_mrr is not None]
                style = dict(color=f"C{n % 10}", marker="o", markersize=3, label=_label(r),
                             linestyle={True: "-", False: "--", None: ":"}[r.static if r.status == "ok" else None])
                ax_t.plot([p[0] for p in pts], [p[2] for p in pts], gid=_gid("convergence", dataset, r.run, "time"),
                          **style)
                ax_e.plot([p[1] for p in pts], [p[2] for p in pts], gid=_gid("convergence", dataset, r.run, "epoch"),
                          **style)
            ax_t.set(title=f"{dataset}: val MRR vs wall-clock", xlabel="wall-clock time (s)", ylabel="val MRR@49")
            ax_e.set(title=f"{dataset}: val MRR vs epoch", xlabel="epochs trained (a parallel pass counts j·k)",
                     ylabel="val MRR@49")
            ax_e.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax_e.legend(fontsize=7, loc="lower right")
        return fig


def scaling_figure(runs: Sequence[RunResult], rows: Sequence[dict]) -> Figure:
    """Events/s and time-to-accuracy speed-up over 1x1x1 against the number of trainers, one series
    per dataset and static setting (points labelled with i x j x k), plus the ideal linear line."""
    with matplotlib.rc_context(_RC):
        pts = [row for row in rows if row["status"] == "ok" and row["trainers"]]
        metrics = (("speedup_events_per_s", "events/s speed-up"), ("speedup_tta", "time-to-accuracy speed-up"))
        if not any(row[m] is not None for row in pts for m, _ in metrics):
            return _empty(Figure(figsize=(6, 2)), "no run has a 1x1x1 baseline to compare with")
        fig = Figure(figsize=(10, 4), layout="constrained")
        axes = fig.subplots(1, 2, squeeze=False)[0]
        top = max(row["trainers"] for row in pts)
        groups = sorted({(row["dataset"], row["static_memory"]) for row in pts})
        for ax, (metric, title) in zip(axes, metrics):
            ax.plot([1, top], [1, top], color="0.5", linestyle="--", label="ideal (linear)", gid=_gid("scaling", metric, "ideal"))
            for n, (dataset, static) in enumerate(groups):
                sel = sorted((row for row in pts if (row["dataset"], row["static_memory"]) == (dataset, static)
                              and row[metric] is not None), key=lambda row: (row["trainers"], row["parallelism"]))
                if not sel:
                    continue
                xs, ys = [row["trainers"] for row in sel], [row[metric] for row in sel]
                ax.plot(xs, ys, linestyle="none", marker="os^Dv"[n % 5], color=f"C{n % 10}",
                        label=f"{dataset} ({'static' if static == 'yes' else 'no static'})",
                        gid=_gid("scaling", metric, dataset, "static" if static == "yes" else "nostatic"))
                for row in sel:
                    if row["trainers"] == 1:
                        continue  # the baselines all sit at (1, 1)
                    ax.annotate(row["parallelism"], (row["trainers"], row[metric]), textcoords="offset points",
                                xytext=(4, 3), fontsize=7)
            ax.set(title=title, xlabel="trainers (i·j·k)", ylabel="speed-up over 1x1x1",
                   xticks=sorted({row["trainers"] for row in pts} | {1}), xlim=(0.5, top + 0.5))
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7, loc="upper left")
        return fig


def ablation_figure(rows: Sequence[dict]) -> Figure:
    """Grouped bars of test MRR@49 and test AP with / without static memory per dataset and i x j x k;
    a missing half of a pair is drawn as no bar, and labelled."""
    with matplotlib.rc_context(_RC):
        if not rows:
            return _empty(Figure(figsize=(6, 2)), "no dataset has runs with and without static memory")
        fig = Figure(figsize=(max(6.0, 2.0 + 1.6 * len(rows)), 3.6), layout="constrained")
        axes = fig.subplots(1, 2, squeeze=False)[0]
        labels = [f"{row['dataset']}\n{row['parallelism']}" for row in rows]
        xs = range(len(rows))
        for ax, (key, title) in zip(axes, (("test_mrr", "test MRR@49"), ("test_ap", "test AP"))):
            for off, side, name, color in ((-0.2, "static", "with static memory", "C0"),
                                           (0.2, "nostatic", "without", "C1")):
                vals = [row[f"{key}_{side}"] for row in rows]
                bars = ax.bar([x + off for x in xs], [v if v is not None else 0.0 for v in vals], width=0.4,
                              color=color, label=name)
                for bar, v, row in zip(bars, vals, rows):
                    bar.set_gid(_gid("ablation", key, side, row["dataset"], row["parallelism"]))
                    ax.annotate("missing" if v is None else f"{v:.3f}", (bar.get_x() + 0.2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
            ax.set(title=title, xticks=list(xs), xticklabels=labels, ylim=(0, 1.25))
            ax.legend(fontsize=7, loc="upper center", ncol=2)
        return fig


def batch_size_figure(rows: Sequence[dict]) -> Figure:
    """Test MRR against batch size (log scale), one line per dataset and static-memory setting
    (rows of :func:`disttgl.report.batch_table.batch_rows`)."""
    with matplotlib.rc_context(_RC):
        if not rows:
            return _empty(Figure(figsize=(6, 2)), "no dataset has runs with two or more batch sizes")
        fig = Figure(figsize=(5.5, 3.4), layout="constrained")
        ax = fig.add_subplot()
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for row in rows:
            if row["test_mrr"] is not None:
                series.setdefault((row["dataset"], row["static_memory"]), []).append((row["batch_size"],
                                                                                     row["test_mrr"]))
        for (dataset, static), pts in sorted(series.items()):
            xs, ys = zip(*sorted(pts))
            (line,) = ax.plot(xs, ys, marker="o", label=f"{dataset} (static memory: {static})")
            line.set_gid(_gid("batch_size", dataset, static))
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size", ylabel="test MRR@49", title="accuracy against batch size")
        ax.legend(fontsize=7)
        return fig


def snapshot_comm_figure(rows: Sequence[dict]) -> Figure:
    """The snapshot DGNNs' training all-to-all against the number of ranks P (rows of
    :func:`disttgl.report.snapshot_table.comm_rows`): bytes an epoch in one direction, in total (line)
    and per rank (small markers), beside the linear bound T·N·d·(1 − 1/P) (dashed) and its ceiling
    T·N·d (dotted), one colour per dataset, model and (T, N, d)."""
    with matplotlib.rc_context(_RC):
        if not rows:
            return _empty(Figure(figsize=(6, 2)), "no snapshot run with several ranks (--parallel)")
        fig = Figure(figsize=(6.5, 4), layout="constrained")
        ax = fig.add_subplot()
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            groups.setdefault((row["dataset"], row["model"], row["T"], row["N"], row["d"], row["element_bytes"]),
                              []).append(row)
        top = max(row["procs"] for row in rows)
        for n, (key, sel) in enumerate(sorted(groups.items())):
            dataset, model, t, nodes, d, size = key
            color, name = f"C{n % 10}", f"{dataset} {model} (T={t}, N={nodes}, d={d})"
            sel = sorted(sel, key=lambda row: row["procs"])
            (line,) = ax.plot([row["procs"] for row in sel], [row["total"] for row in sel], marker="o", color=color,
                              label=f"{name}: total")
            line.set_gid(_gid("snapshot_comm", dataset, model, t, nodes, d, "total"))
            xs = [row["procs"] for row in sel for _ in row["per_rank"]]
            ys = [b for row in sel for b in row["per_rank"]]
            (ranks,) = ax.plot(xs, ys, linestyle="none", marker="_", markersize=10, color=color,
                               label=f"{name}: per rank")
            ranks.set_gid(_gid("snapshot_comm", dataset, model, t, nodes, d, "rank"))
            ps = list(range(1, top + 1))
            (bound,) = ax.plot(ps, [t * nodes * d * (1 - 1 / p) * size for p in ps], linestyle="--", color=color,
                               alpha=0.7, label=f"{name}: T·N·d·(1 − 1/P)")
            bound.set_gid(_gid("snapshot_comm", dataset, model, t, nodes, d, "bound"))
            ceiling = ax.axhline(t * nodes * d * size, linestyle=":", color=color, alpha=0.5)
            ceiling.set_gid(_gid("snapshot_comm", dataset, model, t, nodes, d, "ceiling"))
        ax.set(xlabel="ranks P", ylabel="all-to-all bytes per epoch (one direction)", xticks=list(range(1, top + 1)),
               title="snapshot DGNNs: communication against P")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower right")
        return fig
