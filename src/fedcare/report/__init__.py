"""Study report: typed metrics.json, figures, and a self-contained offline HTML page."""

from fedcare.report.html import render_report, write_report
from fedcare.report.results import MetricsFileError, StudyResults, load_results, write_metrics_csv

__all__ = [
    "MetricsFileError",
    "StudyResults",
    "load_results",
    "render_report",
    "write_metrics_csv",
    "write_report",
]
