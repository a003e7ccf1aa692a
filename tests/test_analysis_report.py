"""Plots and the report on hand-built result sets; the HTML report opened in headless Chromium."""

from __future__ import annotations

import shutil
import struct
import subprocess

import analysis_fixtures as fx
import pytest

import analysis
from analysis import plots
from analysis.report import main, write_report


@pytest.fixture(scope="module")
def ablation_report(tmp_path_factory):
    root = fx.write_ablation_study(tmp_path_factory.mktemp("results") / "ablation")
    return root, write_report(root)


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.slow
def test_report_files_and_summary(ablation_report):
    root, html_path = ablation_report
    out = root / "report"
    assert html_path == out / "report.html"
    for name in ("tables/ablation_downstream.csv", "tables/ablation_downstream.tex", "tables/ablation_structure.tex",
                 "figures/gc_downstream.png", "figures/gc_downstream.svg", "figures/combinations.png",
                 "figures/curves_zeroshot_top1.png", "figures/embeddings_pca.png", "report.md"):
        assert (out / name).is_file(), name
    width, height = _png_size(out / "figures" / "combinations.png")
    assert width > 200 and height > 200
    markdown = (out / "report.md").read_text()
    assert "+GC vs. baseline — helped: raised zero-shot top-1 accuracy from 0.420 to 0.520 (Δ +0.100, +23.8%; " \
           "paired t-test p = 0.003, n = 3 seeds)" in markdown
    assert "+DFS vs. baseline — no significant change in zeroshot/top1" in markdown
    assert "RuntimeError: CUDA out of memory (simulated)" in markdown and "stopped after 1 of 3 epochs" in markdown
    assert "![zeroshot/top1 per configuration](figures/combinations.png)" in markdown
    html = html_path.read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    assert "http://" not in html and "https://" not in html


def test_plot_axes_say_what_is_shown(ablation_report):
    root, _ = ablation_report
    trials = analysis.load(root)
    figure = plots.metric_vs_weight(trials, "regularizers.gc", ["zeroshot/top1", "structure/alignment"])
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes] == [
        ("GC weight (log scale)", "zeroshot/top1"), ("GC weight (log scale)", "structure/alignment")]
    assert figure.axes[0].get_xscale() == "log"
    bars = plots.combination_bars(trials, "zeroshot/top1")
    assert (bars.axes[0].get_xlabel(), bars.axes[0].get_ylabel()) == ("configuration", "zeroshot/top1")
    curves = plots.learning_curves(analysis.load_history(root), "train/loss")
    assert (curves.axes[0].get_xlabel(), curves.axes[0].get_ylabel()) == ("epoch", "train/loss")


@pytest.mark.slow
def test_optuna_plots_and_report(tmp_path):
    root = fx.write_optuna_study(tmp_path / "optuna")
    study = plots.load_optuna_study(root / "optuna.db", "gc-optuna")
    history = plots.optuna_history(study)
    assert history.axes[0].get_ylabel() == "objective (mean over seeds)"
    importances = plots.optuna_importances(study)
    assert importances.axes[0].get_xlabel() == "importance for the objective (fANOVA)"
    labels = [tick.get_text() for tick in importances.axes[0].get_yticklabels()]
    assert set(labels) == {"regularizers.gc", "regularizers.dfs"}
    assert plots.optuna_parallel_coordinates(study).axes
    saved = plots.save_figure(history, tmp_path / "figures", "history")
    assert saved["png"].stat().st_size > 5000 and saved["svg"].read_text().lstrip().startswith("<?xml")
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    assert "figures/optuna_importances.png" in markdown and "GC=0.3 vs. baseline" in markdown
    assert not (root / "report" / "report.html").exists()


@pytest.mark.slow
def test_info_gap_section_states_the_effect(tmp_path):
    root = fx.write_info_gap_study(tmp_path / "gap")
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    assert "## Information gap and alignment pressure" in markdown
    assert "The predicted effect appears: 2 of 2 pressure comparisons" in markdown
    assert "figures/info_gap.png" in markdown
    assert "align 1 vs 0: linear_probe/image_only/image" in markdown


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(tmp_path)]) == 2
    assert main([str(tmp_path), "--formats", "pdf"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "no such directory" in lines[0] and "no study.yaml" in lines[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_report_loads_in_headless_chromium(ablation_report, tmp_path):
    _, html_path = ablation_report
    screenshot = tmp_path / "report.png"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
              "--window-size=1200,2400"]
    shot = subprocess.run([*common, f"--screenshot={screenshot}", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    # Chromium logs every console message (errors included, as INFO:CONSOLE) to stderr; the report has
    # no scripts, so any console line at all is a failure.
    console_messages = [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    assert console_messages == []
    width, height = _png_size(screenshot)
    assert (width, height) == (1200, 2400) and screenshot.stat().st_size > 20_000
    # The DOM chromium built: every embedded image decoded (naturalWidth > 0 is visible only to scripts,
    # so check that the document parsed into the sections and images we wrote).
    dom = subprocess.run([*common, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<h2>Summary</h2>" in dom.stdout and dom.stdout.count("<img ") >= 8
