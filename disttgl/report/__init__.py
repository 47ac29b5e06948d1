"""``disttgl report``: run directories -> accuracy/ablation tables and plots.

One module per step, each importing only the steps before it:

- :mod:`~disttgl.report.collect`: run directories -> :class:`RunResult` (never raising for a broken
  run), and the machine writing the report;
- :mod:`~disttgl.report.tables`: runs -> accuracy / ablation rows, and rows as CSV and Markdown (pure);
- :mod:`~disttgl.report.html_page`: the rows as one HTML page (pure);
- :mod:`~disttgl.report.plots`: the SVG figures (matplotlib, imported only when figures are drawn);
- :mod:`~disttgl.report.command`: :func:`write_report` (every file, atomically) and the CLI.

The names below are the report's API, importable from ``disttgl.report`` directly.
"""

from disttgl.report.collect import (RunResult, collect, find_run_dirs, load_run, machine_info, parse_expect,
                                    read_metrics)
from disttgl.report.command import OUTPUTS, write_report
from disttgl.report.html_page import render_html
from disttgl.report.tables import (ABLATION_COLUMNS, ACCURACY_COLUMNS, DEFAULT_TTA_FRACTION, ablation_rows,
                                   accuracy_rows, render_csv, render_markdown)

__all__ = ["ABLATION_COLUMNS", "ACCURACY_COLUMNS", "DEFAULT_TTA_FRACTION", "OUTPUTS", "RunResult", "ablation_rows",
           "accuracy_rows", "collect", "find_run_dirs", "load_run", "machine_info", "parse_expect", "read_metrics",
           "render_csv", "render_html", "render_markdown", "write_report"]
