"""Reports of one run (`write_report`) and comparisons of several (`compare`, `format_table`)."""

from prunekit.report.compare import compare, format_table, run_row
from prunekit.report.markdown import write_report
from prunekit.report.run import MetricsLog, Run, load_run, main_metric, read_metrics_log

__all__ = [
    "MetricsLog",
    "Run",
    "compare",
    "format_table",
    "load_run",
    "main_metric",
    "read_metrics_log",
    "run_row",
    "write_report",
]
