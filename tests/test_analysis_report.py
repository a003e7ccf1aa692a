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
from analysis.tables import SELECTED_MARK


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
                 "tables/checks.csv", "figures/gc_downstream.png", "figures/gc_downstream.svg",
                 "figures/combinations.png", "figures/curves_zeroshot_synthetic_shapes_top1.png",
                 "figures/embeddings_pca.png", "report.md"):
        assert (out / name).is_file(), name
    width, height = _png_size(out / "figures" / "combinations.png")
    assert width > 200 and height > 200
    markdown = (out / "report.md").read_text()
    opening = markdown.split("## Summary")[1].split("\n\n")[1]
    assert opening.startswith(f"Study “ablation”. Primary metric: {fx.ZEROSHOT} (max)")
    assert f"selected on val/{fx.ZEROSHOT}" in opening
    assert "Test-bed checks: passed (shared-class probe (image embedding) = 0.802" in markdown
    assert f"Selected configuration (best mean of val/{fx.ZEROSHOT} over seeds): +DFS [batch 32]" in markdown
    assert "Primary comparison (+DFS vs. baseline on zeroshot/synthetic_shapes/top1, test split, one-sided, " \
           "a family of 1): no significant difference" in markdown
    assert "+GC [batch 32] vs. baseline — helped: raised zero-shot top-1 accuracy on synthetic_shapes from 0.409 " \
           "to 0.508 (Δ +0.099, +24.2%; Holm-corrected p = 0.012 (m = 6), n = 10 paired seeds, d_z = +" in markdown
    assert f"+DFS [batch 32] {SELECTED_MARK} vs. baseline — no significant change in {fx.ZEROSHOT}" in markdown
    # at n = 8 its top-1 gain passes in the downstream family (m = 6), its structure changes cannot (m = 9)
    assert "- +DFS+GC [batch 32] vs. baseline — helped: raised zero-shot top-1" in markdown
    assert "- Latent structure: +DFS+GC [batch 32] vs. baseline — not testable: structure/modality_gap" in markdown
    # no verdict word without a corrected p beside it
    for line in markdown.splitlines():
        if " helped:" in line or " hurt:" in line:
            assert "Holm-corrected p = " in line and "paired seeds" in line
    assert "zeroshot/top1" not in markdown  # zero-shot per set only, never a cross-set mean
    assert "RuntimeError: CUDA out of memory (simulated)" in markdown and "stopped after 1 of 3 epochs" in markdown
    assert f"![{fx.ZEROSHOT} per configuration](figures/combinations.png)" in markdown
    html = html_path.read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    assert "http://" not in html and "https://" not in html


def test_plot_axes_say_what_is_shown(ablation_report):
    root, _ = ablation_report
    trials = analysis.load(root)
    figure = plots.metric_vs_weight(trials, "regularizers.gc", [fx.ZEROSHOT, "structure/alignment"])
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes] == [
        ("GC weight (log scale)", fx.ZEROSHOT), ("GC weight (log scale)", "structure/alignment")]
    assert figure.axes[0].get_xscale() == "log"
    bars = plots.combination_bars(trials, fx.ZEROSHOT)
    assert (bars.axes[0].get_xlabel(), bars.axes[0].get_ylabel()) == ("configuration", fx.ZEROSHOT)
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
    assert "figures/optuna_importances.png" in markdown
    assert f"GC=0.3 [batch 32] {SELECTED_MARK} vs. baseline" in markdown
    assert f"objective = val/{fx.ZEROSHOT} averaged over seeds" in markdown
    assert not (root / "report" / "report.html").exists()


@pytest.mark.slow
def test_info_gap_section_leads_with_the_preregistered_verdict(tmp_path):
    root = fx.write_info_gap_study(tmp_path / "gap")
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    section = markdown.split("## Information gap and alignment pressure\n\n")[1]
    assert section.startswith("Pre-registered test (gap x pressure interaction): interaction shown (on the "
                              "image-only attribute probe (image embedding): Δ -0.299, corrected p = 0.00781, n = 8")
    assert "Holm over m = 2)" in section.split("\n")[0]
    assert "Primary result — Pre-registered test (gap x pressure interaction): interaction shown" in markdown
    assert "[pre-registered secondary] GC under pressure vs pressure alone (gap 1), image-only attribute probe " \
           "(image embedding): Δ +0.099 (Holm-corrected p = 0.008 (m = 2), n = 8 paired seeds" in section
    assert "| shared-class probe (image embedding) | info_gap=1, align=0 | 0.95 | 0.12 | 0.42 |" in section
    assert "figures/info_gap.png" in markdown


def test_info_gap_without_an_interaction_states_its_power(tmp_path):
    root = fx.write_info_gap_study(tmp_path / "flat", interaction=False)
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    verdict = markdown.split("## Information gap and alignment pressure\n\n")[1].split("\n")[0]
    assert verdict.startswith("Pre-registered test (gap x pressure interaction): no interaction detected (")
    assert "with n = 8 this test has 65% power for an interaction of d_z = 1; 80% power needs |d_z| >= 1.2 " \
           "(exact one-sided (less) sign-flip at α/m = 0.025" in verdict


def test_info_gap_with_the_shared_class_at_chance_is_not_testable(tmp_path):
    root = fx.write_info_gap_study(tmp_path / "chance", class_probe=0.14)
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    verdict = markdown.split("## Information gap and alignment pressure\n\n")[1].split("\n")[0]
    assert verdict == ("Pre-registered test (gap x pressure interaction): not testable: shared-class probe (image "
                       "embedding) = 0.141 (info_gap=1, align=0, mean of 8 seeds), chance 0.125; needs >= 0.417 and "
                       "binomial p < 0.001.")
    assert "interaction shown" not in markdown and " helped:" not in markdown and " hurt:" not in markdown


def test_info_gap_without_a_hypothesis_is_exploratory(tmp_path):
    root = fx.write_info_gap_study(tmp_path / "explore", preregistered=False)
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    assert "No pre-registered hypothesis in the study file: every comparison below is exploratory" in markdown
    assert "exploratory pressure m = " in markdown and "Pre-registered test" not in markdown


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
