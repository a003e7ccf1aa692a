"""Analysis of a study's results directory: tidy DataFrames, ablation tables, plots and the report.

`load(results_dir)` gives one row per trial; `load_history(results_dir)` the per-epoch metrics;
`python -m analysis.report RESULTS_DIR` (or `analysis.report.write_report`) writes the report.
"""

from analysis.loading import load, load_history

__all__ = ["load", "load_history"]
