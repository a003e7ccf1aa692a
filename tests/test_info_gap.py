"""The information-gap study end to end, reduced: one info_gap, three arms (no pressure, pressure, pressure + GC),
two seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_reduced_info_gap_study_reports_its_table_and_plot(tmp_path):
    results = tmp_path / "info_gap"
    command = [
        sys.executable, "-m", "study.run", str(ROOT / "search_spaces" / "info_gap.yaml"), "--results", str(results),
        "--set", "base.data.train_size=128", "--set", "base.data.eval_size=64", "--set", "base.train.epochs=1",
        "--set", "base.train.batch_size=32", "--set", "search.seeds=[0, 1]",
        "--set", "search.space.data.info_gap.values=[1.0]",
        "--set", "search.space.regularizers.values=[{align: 0.0}, {align: 1.0}, {align: 1.0, gc: 0.5}]",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 trials, 0 failed" in proc.stdout
    report = (results / "report" / "report.md").read_text()
    assert "nformation gap" in report
    # the pressure comparison and the recovery comparison, each paired over the two seeds
    assert "align 1 vs 0" in report and "+GC at align 1 vs none" in report
    assert "n=2" in report
    figures = list((results / "report" / "figures").glob("info_gap*.png"))
    assert figures and all(f.stat().st_size > 5000 for f in figures)
