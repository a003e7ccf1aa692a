"""Plots and the report on hand-built result sets; the HTML report opened in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess

import analysis_fixtures as fx
import pytest

import analysis
from analysis import plots
from analysis.configs import configuration_order
from analysis.loading import load_optuna_study
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
                 "tables/checks.csv", "tables/significance.csv", "figures/combinations.png",
                 "figures/curves_zeroshot_synthetic_shapes_top1.png", "figures/embeddings_pca.png", "report.md"):
        assert (out / name).is_file(), name
    width, height = _png_size(out / "figures" / "combinations.png")
    assert width > 200 and height > 200
    markdown = (out / "report.md").read_text()
    summary = markdown.split("## Summary\n")[1].split("\n## ")[0]
    # the answer first: partial (a failed and an incomplete trial), best configuration with its values, its
    # metric with intervals against the baseline, and the verdict of the Holm-corrected primary comparison
    callout = [line.removeprefix("> ") for line in summary.splitlines() if line.startswith("> ")]
    assert callout[0].startswith("Partial report: 38 of 40 expected trials finished, 1 failed; ")
    assert callout[1] == ("Best configuration: +DFS — regularizers.dfs = 1, regularizers.gc = 0, at batch size 32 "
                          f"(selected on val/{fx.ZEROSHOT}, mean over 10 seed(s)).")
    assert callout[2].startswith(f"{fx.ZEROSHOT} 0.415 [95% CI 0.402, 0.428] on test vs. baseline 0.409 [95% CI ")
    assert callout[3].startswith(f"Verdict: no significant difference from the baseline on {fx.ZEROSHOT} "
                                 "(Holm-corrected p = 0.234 (m = 1), n = 10 paired seeds, d_z = +0.27 [")
    assert summary.index("figures/combinations.png") < summary.index("### Each configuration against the baseline")
    assert summary.index("### Each configuration") < summary.index("Test-bed checks: passed (shared-class probe")
    # the significance table: one row per comparison; a verdict word only beside a corrected p below 0.05
    assert f"| +GC [batch 32] | Downstream metrics | {fx.ZEROSHOT} | +0.099 | 0.012 (6) | 10 | +" in summary
    assert ("| +DFS+GC [batch 32] | Latent-structure diagnostics | structure/modality_gap | +0.000 | 1.000 (9) | 8 "
            "| – | not testable at n = 8 |") in summary
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| +")]
    assert len(rows) == 15
    for cells in rows:
        if cells[-1].rstrip(" |") in ("helped", "hurt", "changed"):
            assert float(cells[4].split()[0]) < 0.05
    assert "zeroshot/top1" not in markdown  # zero-shot per set only, never a cross-set mean
    assert "RuntimeError: CUDA out of memory (simulated)" in markdown and "1 of 3 epochs so far" in markdown
    # degenerate figures are left out with the reason: GC and DFS each ran one non-zero weight
    assert "No figure against the GC weight: the study ran one non-zero weight (0.5)" in markdown
    assert not (out / "figures" / "gc_downstream.png").exists()
    trials_table = markdown.split("### All trials")[1]
    assert "| config | seed | trial_id | status | epochs | time (s) |" in trials_table
    assert "| 30 |" in trials_table and "30.0" not in trials_table
    provenance = markdown.split("## Provenance")[1]
    assert "report built " in provenance and "git commit " in provenance and "torch " in provenance
    html = html_path.read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    assert "http://" not in html and "https://" not in html
    assert "<title>Study report: ablation (partial)</title>" in html and '<div class="answer">' in html


def test_plot_axes_say_what_is_shown(ablation_report):
    root, _ = ablation_report
    trials = analysis.load(root)
    figure = plots.metric_vs_weight(trials, "regularizers.gc", [fx.ZEROSHOT, "structure/alignment"])
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes] == [
        ("GC weight (log scale)", fx.ZEROSHOT), ("GC weight (log scale)", "structure/alignment")]
    assert figure.axes[0].get_xscale() == "log"
    figure.canvas.draw()
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["0.5"]  # the sampled weight
    bars = plots.combination_bars(trials, fx.ZEROSHOT)
    assert (bars.axes[0].get_xlabel(), bars.axes[0].get_ylabel()) == ("configuration", "top1")
    assert bars.axes[0].get_title().startswith(fx.ZEROSHOT)
    # a long metric name is the title, not a y label taller than the axes (clipped)
    bars.canvas.draw()
    label_box = bars.axes[0].yaxis.label.get_window_extent()
    assert label_box.y0 >= 0 and label_box.y1 <= bars.bbox.height
    finished = trials[trials["status"] == "finished"]
    curves = plots.learning_curves(analysis.load_history(root), ["train/loss", "train/contrastive_loss"],
                                   configuration_order(finished))
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in curves.axes] == [
        ("epoch", "train/loss"), ("epoch", "train/contrastive_loss")]
    epochs = sorted({x for line in curves.axes[0].lines for x in line.get_xdata()})
    assert epochs[0] == 1 and all(float(x).is_integer() for x in epochs)  # 1-based, whole epochs
    legend = [text.get_text() for text in curves.axes[0].get_legend().get_texts()]
    assert legend == ["baseline", "+DFS", "+GC", "+DFS+GC"]  # by weight, not alphabetically


def test_weights_sampled_close_together_get_one_tick_not_two_overlapping(tmp_path):
    weights = (0.0, 0.187, 0.205, 0.443, 0.643)
    specs = [fx.TrialSpec({"regularizers.gc": weight, "train.seed": seed}, {fx.ZEROSHOT: 0.5 + seed / 100})
             for weight in weights for seed in (0, 1)]
    search = {**fx.ablation_search(), "seeds": [0, 1],
              "space": {"regularizers.gc": {"type": "choice", "values": list(weights)}}}
    trials = analysis.load(fx.write_results_dir(tmp_path / "close", search, specs))
    figure = plots.metric_vs_weight(trials, "regularizers.gc", [fx.ZEROSHOT])
    figure.canvas.draw()
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["0.187", "0.443", "0.643"]


@pytest.mark.slow
def test_optuna_plots_and_report(tmp_path):
    root = fx.write_optuna_study(tmp_path / "optuna")
    study = load_optuna_study(root / "optuna.db", "gc-optuna")
    objectives = sorted(trial.value for trial in study.trials)
    assert len(objectives) == len(fx.OPTUNA_WEIGHTS)
    history = plots.optuna_history(study)
    assert history.axes[0].get_ylabel() == "objective (mean over seeds)"
    (points, *_) = history.axes[0].collections  # one point per Optuna trial, at its objective
    assert sorted(points.get_offsets()[:, 1]) == pytest.approx(objectives)
    import optuna

    three = optuna.create_study(direction="maximize")  # few trials: where matplotlib would tick 0.5, 1.5
    for value in (0.15, 0.11, 0.16):
        three.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    assert all(float(tick).is_integer() for tick in plots.optuna_history(three).axes[0].get_xticks())
    importances = plots.optuna_importances(study)
    assert importances.axes[0].get_xlabel() == "importance for the objective (fANOVA)"
    labels = [tick.get_text() for tick in importances.axes[0].get_yticklabels()]
    assert set(labels) == {"regularizers.gc", "regularizers.dfs"}
    bars = sorted(bar.get_width() for bar in importances.axes[0].patches)  # one bar per parameter
    assert len(bars) == 2 and sum(bars) == pytest.approx(1.0)
    # one line per trial across the objective and each parameter, starting at the trial's objective
    parallel = plots.optuna_parallel_coordinates(study).axes[0]
    (lines,) = [collection for collection in parallel.collections if collection.get_array() is not None]
    assert sorted(segment[0, 1] for segment in lines.get_segments()) == pytest.approx(objectives)
    assert {len(segment) for segment in lines.get_segments()} == {3}  # objective, gc, dfs
    saved = plots.save_figure(history, tmp_path / "figures", "history")
    assert saved["png"].stat().st_size > 5000 and saved["svg"].read_text().lstrip().startswith("<?xml")
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    assert "figures/optuna_importances.png" in markdown
    assert f"| GC=0.3 [batch 32] {SELECTED_MARK} | Downstream metrics |" in markdown
    assert f"objective = val/{fx.ZEROSHOT} averaged over seeds" in markdown
    assert not (root / "report" / "report.html").exists()


@pytest.mark.slow
def test_info_gap_section_leads_with_the_preregistered_verdict(tmp_path):
    root = fx.write_info_gap_study(tmp_path / "gap")
    assert main([str(root), "--formats", "md"]) == 0
    markdown = (root / "report" / "report.md").read_text()
    section = markdown.split("## Information gap and alignment pressure\n\n")[1]
    assert section.startswith("Pre-registered test (gap x pressure interaction): interaction shown (on the "
                              "image-side gap probe: colour (image embedding): Δ -0.299, corrected p = 0.00781, n = 8")
    assert "Holm over m = 2)" in section.split("\n")[0]
    assert "> Verdict: Pre-registered test (gap x pressure interaction): interaction shown" in markdown
    # a pre-registered test selects nothing
    assert "Best configuration" not in markdown and "◀ selected" not in markdown
    assert "[pre-registered secondary] GC under pressure vs pressure alone (gap 1), image-side gap probe: colour " \
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
              "--window-size=1400,2400"]
    shot = subprocess.run([*common, f"--screenshot={screenshot}", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    # Chromium logs every console message (errors included, as INFO:CONSOLE) to stderr; the report has
    # no scripts, so any console line at all is a failure.
    console_messages = [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    assert console_messages == []
    width, height = _png_size(screenshot)
    assert (width, height) == (1400, 2400) and screenshot.stat().st_size > 20_000
    # Layout, measured by Chromium itself: a copy of the report with one probe script (the report has none)
    # writes the page's scroll width and how many images decoded into the DOM that --dump-dom prints.
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.probe = JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
    images: images.length, decoded: images.filter(i => i.complete && i.naturalWidth > 0).length});
});
</script></body>"""))

    def measure(page) -> dict:
        dom = subprocess.run([*common, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
        assert "<h2>Summary</h2>" in dom.stdout and dom.stdout.count("<img ") >= 4
        found = re.search(r'data-probe="([^"]*)"', dom.stdout)
        assert found, dom.stdout[-2000:]
        return json.loads(html.unescape(found.group(1)))

    layout = measure(probe)
    print(f"chromium at 1400 px: {layout}")
    assert layout["scrollWidth"] <= layout["clientWidth"] <= 1400, layout  # no horizontal overflow at 1400 px
    assert layout["decoded"] == layout["images"] >= 4, layout  # every figure loaded
    # the probe sees overflow where there is some: the same page with one 2000-px-wide block
    control = tmp_path / "control.html"
    control.write_text(probe.read_text().replace("<h1>", '<div style="width: 2000px">wide</div><h1>', 1))
    assert measure(control)["scrollWidth"] > 1400


def test_albef_trials_whose_pretraining_linked_nothing_are_not_compared(tmp_path):
    """`albef/trained` = 0 (ITC at chance, ITM at its prior): the trial is "not trained", left out of the
    tables, listed with its numbers; a baseline that never trained makes the study's verdict "not testable"."""
    untrained = {"albef/trained": 0.0, "albef/itc_loss": 5.65, "albef/itc_chance": 5.663,
                 "albef/itm_accuracy": 0.667, "albef/itm_prior_accuracy": 0.667}
    trained = untrained | {"albef/trained": 1.0, "albef/itc_loss": 4.2, "albef/itm_accuracy": 0.8}
    specs = [fx.TrialSpec({"regularizers.gc": gc, "train.seed": seed},
                          (trained if gc and seed == 0 else untrained) | {"retrieval/mean_recall": 0.02 + gc / 10,
                                                                          "val/retrieval/mean_recall": 0.02})
             for gc in (0.0, 0.5) for seed in (0, 1)]
    base = fx.base_config() | {"model": {"family": "albef"}}
    base["eval"] = {"tasks": ["retrieval"]}
    search = {"method": "grid", "metric": "retrieval/mean_recall", "mode": "max", "seeds": [0, 1],
              "space": {"regularizers.gc": {"type": "grid", "values": [0.0, 0.5]}}}
    root = fx.write_results_dir(tmp_path / "albef", search, specs, base=base)

    trials = analysis.load(root)
    assert trials["status"].value_counts().to_dict() == {"not_trained": 3, "finished": 1}
    reason = trials[trials["status"] == "not_trained"]["error"].iloc[0]
    assert reason.startswith("not trained: ITC 5.650 against its chance 5.663, ITM accuracy 0.667")

    report = write_report(root, formats=["md"]).read_text()
    verdict = next(line for line in report.splitlines() if line.startswith("> Verdict:"))
    assert verdict.startswith("> Verdict: no verdict — not testable: pre-training linked images and texts")
    assert "= 0.000 (baseline: the fraction of 2 seeds" in verdict
    assert "1 finished, 3 not trained" in report
    assert "Partial report" not in report  # a trial that trained nothing has still ended
    assert report.count("(not_trained): not trained: ITC") == 3


def test_a_metric_reported_at_one_epoch_gets_no_learning_curve(tmp_path):
    """eval.every_epoch false: the search metric arrives with the last epoch only; a one-point "curve" is
    replaced by a sentence, while train/loss (every epoch) keeps its curve."""
    specs = [fx.TrialSpec({"regularizers.gc": gc, "train.seed": 0}, {"retrieval/mean_recall": 0.1 + gc})
             for gc in (0.0, 0.5)]
    search = {"method": "grid", "metric": "retrieval/mean_recall", "mode": "max", "seeds": [0],
              "space": {"regularizers.gc": {"type": "grid", "values": [0.0, 0.5]}}}
    root = fx.write_results_dir(tmp_path / "last_epoch_only", search, specs)
    for result in root.glob("trials/*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        for row in rows[:-1]:
            del row["retrieval/mean_recall"]
        result.write_text("".join(json.dumps(row) + "\n" for row in rows))

    report = write_report(root, formats=["md"]).read_text()
    assert "No learning curve of retrieval/mean_recall: it was reported at one epoch only." in report
    figures = {path.name for path in (root / "report" / "figures").iterdir()}
    assert "curves_train_loss.png" in figures and "curves_retrieval_mean_recall.png" not in figures
