# Report: every configured run's results -> tables and plots (`disttgl report`), each flagged for
# `snakemake --report report.html`. Runs come from config `datasets` x `runs`; the CLI is also given
# them as --expect so a run without a readable summary is listed as missing/failed, never dropped.

_REPORT_RESULTS = config.get("results_dir", "results")
_REPORT_OUT = f"{_REPORT_RESULTS}/report"
# parallel.smk (when included) defines the distributed layouts; the report alone works without it
_REPORT_LAYOUTS = parallel_layouts() if "parallel_layouts" in globals() else []
_REPORT_RUNS = [f"{dataset}/{run}" for dataset in config["datasets"] for run in config["runs"]] + [
    f"{dataset}/{layout}" for dataset in config["datasets"] for layout in _REPORT_LAYOUTS]


rule report:
    input:
        summaries=[f"{_REPORT_RESULTS}/{run}/summary.json" for run in _REPORT_RUNS],
    output:
        html=report(f"{_REPORT_OUT}/accuracy.html", caption="../report/accuracy.rst", category="Accuracy"),
        csv=report(f"{_REPORT_OUT}/accuracy.csv", caption="../report/accuracy_csv.rst", category="Accuracy"),
        md=f"{_REPORT_OUT}/accuracy.md",
        convergence=report(f"{_REPORT_OUT}/convergence.svg", caption="../report/convergence.rst",
                           category="Convergence"),
        scaling=report(f"{_REPORT_OUT}/scaling.svg", caption="../report/scaling.rst", category="Scaling"),
        ablation=report(f"{_REPORT_OUT}/static_ablation.svg", caption="../report/static_ablation.rst",
                        category="Static memory"),
        ablation_csv=report(f"{_REPORT_OUT}/static_ablation.csv", caption="../report/static_ablation_csv.rst",
                            category="Static memory"),
        ablation_md=f"{_REPORT_OUT}/static_ablation.md",
    log:
        "logs/report.log",
    params:
        run_dirs=[f"{_REPORT_RESULTS}/{run}" for run in _REPORT_RUNS],
        expect=_REPORT_RUNS,
        out=_REPORT_OUT,
    shell:
        "disttgl report {params.run_dirs:q} --out {params.out:q} --expect {params.expect:q} > {log:q} 2>&1"
