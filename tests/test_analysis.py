"""Loading, labels, statistics and ablation tables on result sets built by hand (tests/analysis_fixtures.py)."""

from __future__ import annotations

import json

import analysis_fixtures as fx
import numpy as np
import pytest
from scipy import stats

import analysis
from analysis.loading import expected_trial_count, missing_trials
from analysis.stats import compare
from analysis.tables import ablation_table, reference_table


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory):
    return fx.write_ablation_study(tmp_path_factory.mktemp("results") / "ablation")


@pytest.fixture(scope="module")
def trials(ablation_dir):
    return analysis.load(ablation_dir)


def _by(trials, config, seed):
    return trials[(trials["config"] == config) & (trials["seed"] == seed)].iloc[0]


def test_load_statuses_labels_and_final_metrics(trials):
    assert len(trials) == 12
    assert set(trials["config"]) == {"baseline", "+DFS", "+GC", "+DFS+GC"}
    assert trials["status"].value_counts().to_dict() == {"finished": 10, "stopped_early": 1, "failed": 1}
    failed = _by(trials, "+DFS+GC", 2)
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: CUDA out of memory (simulated)"
    stopped = _by(trials, "+DFS+GC", 1)
    assert stopped["epochs_completed"] == 1 and "1 of 3" in stopped["error"]
    # The truncated last line of the baseline's seed-2 result.json is skipped; the epochs before it count.
    truncated = _by(trials, "baseline", 2)
    assert truncated["status"] == "finished" and truncated["zeroshot/top1"] == pytest.approx(0.44)
    assert _by(trials, "+GC", 1)["zeroshot/top1"] == pytest.approx(0.42 + 0.11)
    assert _by(trials, "+GC", 0)["time_total_s"] == pytest.approx(30.0)
    assert (trials["resources.num_workers"] == 2).all()
    assert trials[trials["is_baseline"]]["config"].unique().tolist() == ["baseline"]


def test_load_history_is_long_form_per_epoch(ablation_dir):
    history = analysis.load_history(ablation_dir)
    curve = history[(history["config"] == "+GC") & (history["seed"] == 0) & (history["metric"] == "zeroshot/top1")]
    assert curve["epoch"].tolist() == [1, 2, 3]
    assert curve["value"].tolist() == pytest.approx([0.5 / 3, 1.0 / 3, 0.5])


def test_partial_study_reports_missing_and_empty_trials(tmp_path):
    root = fx.write_results_dir(tmp_path / "partial", fx.ablation_search(), fx.ablation_trials()[:9])
    (root / "trials" / "train_trial_empty").mkdir()  # started, nothing written yet
    trials = analysis.load(root)
    study = trials.attrs["study"]
    assert expected_trial_count(study) == 12
    assert trials["status"].value_counts()["incomplete"] == 1
    missing = missing_trials(study, trials)
    assert missing == [f"regularizers.dfs=1.0, regularizers.gc=0.5, seed={seed}" for seed in (0, 1, 2)]


def test_not_a_results_dir_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        analysis.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no study.yaml"):
        analysis.load(tmp_path)


def test_weighted_labels_when_a_weight_is_searched(tmp_path):
    specs = [fx.TrialSpec({"regularizers.gc": weight, "train.seed": 0}, {"zeroshot/top1": 0.5})
             for weight in (0.0, 0.31, 1.0)]
    search = {**fx.ablation_search(), "space": {"regularizers.gc": {"type": "grid", "values": [0.0, 0.31, 1.0]}},
              "seeds": [0]}
    labels = analysis.load(fx.write_results_dir(tmp_path / "w", search, specs))["config"].tolist()
    assert sorted(labels) == ["GC=0.31", "GC=1", "baseline"]


def test_paired_t_test_and_bootstrap_fallback():
    baseline = np.array(fx.BASELINE_TOP1)
    treated = baseline + np.array(fx.GC_GAIN)
    paired = compare(_series(treated, [0, 1, 2]), _series(baseline, [0, 1, 2]))
    assert paired.test == "paired t-test" and paired.significant
    assert paired.p_value == pytest.approx(stats.ttest_rel(treated, baseline).pvalue)
    assert paired.cohens_d == pytest.approx(0.10 / 0.01)
    unpaired = compare(_series(treated, [0, 1, 2]), _series(baseline, [5, 6, 7]))  # no seed in common
    assert unpaired.test == "bootstrap CI" and unpaired.p_value is None and unpaired.ci[0] < 0.1 < unpaired.ci[1]
    assert compare(_series([1.0], [0]), _series([0.5], [0])).test == "none"


def _series(values, seeds):
    import pandas as pd

    return pd.Series(list(values), index=seeds, dtype=float)


def test_ablation_table_numbers_marks_and_bold(trials):
    table = ablation_table(trials, ["zeroshot/top1", "retrieval/mean_recall", "structure/alignment"], "Downstream")
    assert table.rows == ["baseline", "+DFS", "+GC", "+DFS+GC"]
    gc = table.cells[("+GC", "zeroshot/top1")]
    assert (gc.mean, gc.n) == (pytest.approx(0.52), 3)
    assert gc.std == pytest.approx(np.std(np.add(fx.BASELINE_TOP1, fx.GC_GAIN), ddof=1))
    assert gc.comparison.delta == pytest.approx(0.10) and gc.comparison.p_value == pytest.approx(0.0033, abs=2e-4)
    assert gc.mark == "*"
    dfs = table.cells[("+DFS", "zeroshot/top1")]
    assert dfs.mark == "" and dfs.comparison.p_value > 0.5
    only_finished = table.cells[("+DFS+GC", "zeroshot/top1")]
    assert only_finished.n == 1 and only_finished.comparison.test == "none"
    # lower is better for structure/alignment; ties (retrieval is equal everywhere) mark nothing
    assert table.cells[("+DFS+GC", "structure/alignment")].best
    assert not any(table.cells[(row, "retrieval/mean_recall")].best for row in table.rows)
    markdown = table.to_markdown()
    assert "| +GC | 0.520 ± 0.017 (3) Δ +0.100* |" in markdown
    assert "| +DFS | 0.423 ± 0.021 (3) Δ +0.003 |" in markdown
    latex = table.to_latex(label="tab:test")
    assert "\\toprule" in latex and "\\bfseries 0.530" in latex and "$\\Delta$ +0.100$^{*}$" in latex
    assert "retrieval/mean\\_recall" in latex
    assert "font-weight: bold" in table.to_html()
    csv_rows = table.frame().set_index(["config", "metric"])
    assert csv_rows.loc[("+GC", "zeroshot/top1"), "significant"]
    assert not csv_rows.loc[("+DFS", "zeroshot/top1"), "significant"]


def test_reference_table_matches_paper_data_sets(tmp_path):
    specs = [fx.TrialSpec({"regularizers.gc": gc, "train.seed": seed},
                          {"zeroshot/top1": 0.3, "zeroshot/cifar10/top1": 0.40 + gc / 10, "zeroshot/svhn/top1": 0.2})
             for gc in (0.0, 0.5) for seed in (0, 1)]
    search = {**fx.ablation_search(), "seeds": [0, 1],
              "space": {"regularizers.gc": {"type": "grid", "values": [0.0, 0.5]}}}
    trials = analysis.load(fx.write_results_dir(tmp_path / "ref", search, specs))
    reference = reference_table(trials, ["cifar10", "svhn"])
    assert list(reference.columns) == ["CIFAR10"]
    assert reference.loc["paper: GC", "CIFAR10"] == pytest.approx(56.36)
    assert reference.loc["this study: +GC", "CIFAR10"] == pytest.approx(45.0)
    assert reference_table(trials, ["svhn"]) is None


def test_result_json_garbage_lines_are_skipped(tmp_path):
    root = fx.write_results_dir(tmp_path / "g", fx.ablation_search(), fx.ablation_trials()[:1])
    result = next((root / "trials").glob("train_trial_*")) / "result.json"
    result.write_text("not json\n" + result.read_text() + json.dumps([1, 2]) + "\n")
    assert analysis.load(root)["status"].tolist() == ["finished"]


def _pressure(deltas, p_values, ds):
    import pandas as pd

    metrics = ["linear_probe/image_only/image", "linear_probe/text_only/text"] * (len(deltas) // 2)
    return pd.DataFrame({"metric": metrics, "info_gap": [0.5, 0.5, 1.0, 1.0][:len(deltas)], "delta": deltas,
                         "p_value": p_values, "cohens_d": ds, "n": 5})


def test_info_gap_verdict_tells_a_consistent_unestablished_drop_from_none():
    from analysis.info_gap import _verdict

    empty = _pressure([], [], []).iloc[0:0]
    # rows: image probe at 0.5, text probe at 0.5, image probe at 1, text probe at 1
    text_drops = _pressure([-0.006, -0.068, -0.003, -0.143], [0.42, 0.062, 0.39, 0.052], [-0.4, -1.15, -0.44, -1.23])
    verdict = _verdict(text_drops, empty)
    assert verdict.startswith("The predicted direction, not established: the text-only attribute probe")
    assert "-0.068 at gap 0.5, -0.143 at gap 1" in verdict and "n = 5 paired seeds" in verdict
    assert "the image-only attribute probe (image embedding) does not drop consistently" in verdict
    one_gap_only = _pressure([-0.006, -0.068, -0.003, 0.01], [0.42, 0.062, 0.39, 0.8], [-0.4, -1.15, -0.44, 0.1])
    assert _verdict(one_gap_only, empty).startswith("The predicted effect does not appear: 0 of 4")
    significant = _pressure([-0.08, -0.13], [0.01, 0.02], [-2.0, -1.8])
    assert _verdict(significant, empty).startswith("The first half of the predicted effect appears")
