# Report: every configured run's results -> tables and plots (`disttgl report`), each flagged for
# `snakemake --report report.html`. Runs come from config `datasets` x (`runs` + parallel layouts +
# `snapshot_runs` + `tma_runs`) (common.smk: report_runs); the CLI is also given them as --expect
# so a run without a readable summary is listed as missing/failed, never dropped.


rule report:
    input:
        summaries=report_summaries(),
    output:
        html=report(f"{REPORT}/accuracy.html", caption="../report/accuracy.rst", category="Accuracy"),
        csv=report(f"{REPORT}/accuracy.csv", caption="../report/accuracy_csv.rst", category="Accuracy"),
        md=f"{REPORT}/accuracy.md",
        convergence=report(f"{REPORT}/convergence.svg", caption="../report/convergence.rst",
                           category="Convergence"),
        scaling=report(f"{REPORT}/scaling.svg", caption="../report/scaling.rst", category="Scaling"),
        ablation=report(f"{REPORT}/static_ablation.svg", caption="../report/static_ablation.rst",
                        category="Static memory"),
        ablation_csv=report(f"{REPORT}/static_ablation.csv", caption="../report/static_ablation_csv.rst",
                            category="Static memory"),
        ablation_md=f"{REPORT}/static_ablation.md",
        batch_size=report(f"{REPORT}/batch_size.svg", caption="../report/batch_size.rst", category="Batch size"),
        snapshot_comm=report(f"{REPORT}/snapshot_comm.svg", caption="../report/snapshot_comm.rst",
                             category="Snapshot DGNNs"),
    params:
        run_dirs=report_run_dirs,
        expect=report_runs(),
        out=lambda w, output: os.path.dirname(output.html),
    log:
        "logs/report.log",
    conda:
        "../envs/disttgl.yaml"
    shell:
        "disttgl report {params.run_dirs:q} --out {params.out:q} --expect {params.expect:q} > {log:q} 2>&1"
