"""Loading, labels, statistics and ablation tables on result sets built by hand (tests/analysis_fixtures.py)."""

from __future__ import annotations

import json

import analysis_fixtures as fx
import numpy as np
import pytest

import analysis
from analysis.loading import missing_trials, read_study
from analysis.stats import PAIRED_EXACT, UNPAIRED, compare, correct
from analysis.summary import select_configuration
from analysis.tables import SELECTED_MARK, ablation_table, reference_table

TOP1 = fx.ZEROSHOT


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory):
    return fx.write_ablation_study(tmp_path_factory.mktemp("results") / "ablation")


@pytest.fixture(scope="module")
def trials(ablation_dir):
    return analysis.load(ablation_dir)


def _by(trials, config, seed):
    return trials[(trials["config"] == config) & (trials["seed"] == seed)].iloc[0]


def test_load_statuses_labels_and_final_metrics(trials):
    assert len(trials) == 40
    assert set(trials["config"]) == {"baseline", "+DFS", "+GC", "+DFS+GC"}
    assert trials["status"].value_counts().to_dict() == {"finished": 38, "incomplete": 1, "failed": 1}
    failed = _by(trials, "+DFS+GC", 2)
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: CUDA out of memory (simulated)"
    stopped = _by(trials, "+DFS+GC", 1)
    assert stopped["epochs_completed"] == 1 and "1 of 3" in stopped["error"]
    # The truncated last line of the baseline's seed-2 result.json is skipped; the epochs before it count.
    truncated = _by(trials, "baseline", 2)
    assert truncated["status"] == "finished" and truncated[TOP1] == pytest.approx(0.42)
    assert _by(trials, "+GC", 1)[TOP1] == pytest.approx(0.41 + 0.10)
    assert _by(trials, "+DFS", 1)[f"val/{TOP1}"] == pytest.approx(0.41 - 0.02 + fx.VAL_DFS_BONUS)
    assert _by(trials, "+GC", 0)["time_total_s"] == pytest.approx(30.0)
    assert (trials["resources.num_workers"] == 2).all()
    assert trials[trials["is_baseline"]]["config"].unique().tolist() == ["baseline"]


def test_load_history_is_long_form_per_epoch(ablation_dir):
    history = analysis.load_history(ablation_dir)
    curve = history[(history["config"] == "+GC") & (history["seed"] == 0) & (history["metric"] == TOP1)]
    assert curve["epoch"].tolist() == [1, 2, 3]
    assert curve["value"].tolist() == pytest.approx([0.49 / 3, 0.98 / 3, 0.49])


def test_partial_study_reports_missing_and_empty_trials(tmp_path):
    root = fx.write_results_dir(tmp_path / "partial", fx.ablation_search(), fx.ablation_trials()[:37])
    (root / "trials" / "train_trial_empty").mkdir()  # started, nothing written yet
    trials = analysis.load(root)
    study = read_study(root)
    assert study.num_trials() == 40
    # the empty directory, and a trial with 1 of 3 epochs (no scheduler stops trials: interrupted, not "early")
    assert trials["status"].value_counts()["incomplete"] == 2
    missing = missing_trials(study, trials)
    assert missing == [f"regularizers.dfs=1.0, regularizers.gc=0.5, seed={seed}" for seed in (7, 8, 9)]


def test_missing_trials_of_an_arm_grid_are_named_by_the_keys_the_arm_sets(tmp_path):
    arms = [{"data.info_gap": 0.0, "regularizers.align": 0.0},
            {"data.info_gap": 1.0, "regularizers": {"align": 1.0, "gc": 0.5}}]
    search = {"method": "grid", "metric": "linear_probe/image_only/image", "mode": "max", "num_samples": 1,
              "seeds": [1, 2], "space": {"arm": {"type": "grid", "values": arms}}, "scheduler": {"type": "none"}}
    specs = [fx.TrialSpec({"arm": arm, "train.seed": seed}, {"linear_probe/image_only/image": 0.5})
             for arm in arms for seed in (1, 2)]
    root = fx.write_results_dir(tmp_path / "arms", search, specs[:-1])
    missing = missing_trials(read_study(root), analysis.load(root))
    assert missing == ["data.info_gap=1.0, regularizers.align=1.0, regularizers.gc=0.5, seed=2"]


def test_not_a_results_dir_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        analysis.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no study.yaml"):
        analysis.load(tmp_path)


def test_results_read_away_from_their_data_load_and_are_still_validated(tmp_path):
    """study.yaml is validated as a StudySpec, but data paths that exist only where the study ran do not
    stop the analysis; a study that is not valid apart from its paths still does."""
    from trainers.config import ConfigError
    from trainers.study_spec import load_study

    base = fx.base_config()
    base["data"] |= {"zeroshot": ["cifar10:/elsewhere/cifar"], "annotations": {"retrieval": "/elsewhere/coco.json"}}
    specs = [fx.TrialSpec({"regularizers.dfs": 0.0, "regularizers.gc": 0.0, "train.seed": 0}, {TOP1: 0.5})]
    root = fx.write_results_dir(tmp_path / "moved", fx.ablation_search(), specs, base=base)
    with pytest.raises(ConfigError, match="/elsewhere"):
        load_study(root / "study.yaml")
    assert analysis.load(root)["status"].tolist() == ["finished"]
    assert read_study(root).base.data.zeroshot == ["cifar10:/elsewhere/cifar"]
    base["train"]["epochs"] = 0
    with pytest.raises(ConfigError, match="base.train.epochs"):
        analysis.load(fx.write_results_dir(tmp_path / "broken", fx.ablation_search(), specs, base=base))


def test_weighted_labels_when_a_weight_is_searched(tmp_path):
    specs = [fx.TrialSpec({"regularizers.gc": weight, "train.seed": 0}, {TOP1: 0.5})
             for weight in (0.0, 0.31, 1.0)]
    search = {**fx.ablation_search(), "space": {"regularizers.gc": {"type": "grid", "values": [0.0, 0.31, 1.0]}},
              "seeds": [0]}
    labels = analysis.load(fx.write_results_dir(tmp_path / "w", search, specs))["config"].tolist()
    assert sorted(labels) == ["GC=0.31", "GC=1", "baseline"]


def test_a_regularizers_own_option_is_in_its_label_and_not_a_context(tmp_path):
    """bb_s searched beside bb: the baseline (bb = 0, bb_s at its base value) is every BB trial's baseline,
    so each is compared with it; bb_s tells BB configurations apart only where BB is on."""
    configs = [(0.0, 0.25), (0.2, 0.6), (0.4, 0.3)]
    specs = [fx.TrialSpec({"regularizers.bb": bb, "regularizers.bb_s": s, "train.seed": seed},
                          {TOP1: 0.4 + bb / 10 + seed / 100})
             for bb, s in configs for seed in (0, 1, 2)]
    search = {**fx.ablation_search(), "seeds": [0, 1, 2], "space": {
        "regularizers.bb": {"type": "choice", "values": [0.0, 0.2, 0.4]},
        "regularizers.bb_s": {"type": "choice", "values": [0.25, 0.3, 0.6]}}}
    trials = analysis.load(fx.write_results_dir(tmp_path / "bb", search, specs))
    assert sorted(trials["config"].unique()) == ["BB=0.2 (bb_s=0.6)", "BB=0.4 (bb_s=0.3)", "baseline"]
    assert set(trials["context"]) == {""}
    table = ablation_table(trials, [TOP1], "Downstream")
    gain = table.cells[("BB=0.4 (bb_s=0.3)", TOP1)].comparison
    assert gain.n_pairs == 3 and gain.delta == pytest.approx(0.04)

    # at one bridge time throughout, the label does not repeat it
    same_s = [fx.TrialSpec({**spec.params, "regularizers.bb_s": 0.5}, spec.final) for spec in specs]
    labels = analysis.load(fx.write_results_dir(tmp_path / "one_s", search, same_s))["config"]
    assert sorted(labels.unique()) == ["BB=0.2", "BB=0.4", "baseline"]


def test_a_heads_control_and_standard_error_are_shown_not_compared(tmp_path):
    """The text-only control and the margin's standard error sit beside VQA's accuracy and margin, but a
    regularizer is judged on the outcomes only: the Holm family counts those two."""
    head = {"vqa/accuracy": 0.42, "vqa/text_only_accuracy": 0.28, "vqa/image_margin": 0.14,
            "vqa/image_margin_se": 0.02}
    specs = [fx.TrialSpec({"regularizers.gc": gc, "train.seed": seed},
                          {TOP1: 0.4, **{key: value + gc / 10 + seed / 100 for key, value in head.items()}})
             for gc in (0.0, 0.5) for seed in (0, 1, 2)]
    search = {**fx.ablation_search(), "seeds": [0, 1, 2],
              "space": {"regularizers.gc": {"type": "choice", "values": [0.0, 0.5]}}}
    trials = analysis.load(fx.write_results_dir(tmp_path / "heads", search, specs))
    table = ablation_table(trials, list(head), "Downstream")
    assert table.family_size == 2
    assert table.cells[("+GC", "vqa/image_margin")].comparison.delta == pytest.approx(0.05)
    assert table.cells[("+GC", "vqa/text_only_accuracy")].comparison is None
    assert table.cells[("+GC", "vqa/text_only_accuracy")].mean == pytest.approx(0.34)
    assert not any(table.cells[(row, "vqa/text_only_accuracy")].best for row in table.rows)


def test_paired_sign_flip_test_and_no_bootstrap_on_unpaired_runs():
    baseline = np.array(fx.BASELINE_TOP1)
    treated = baseline + np.array(fx.GC_GAIN)
    paired = compare(_series(treated, fx.SEEDS), _series(baseline, fx.SEEDS))
    assert paired.test == PAIRED_EXACT and paired.n_pairs == 10
    assert paired.p_value == pytest.approx(2 / 2**10)  # every difference positive: the two-sided floor
    differences = treated - baseline
    assert paired.effect == pytest.approx(differences.mean() / differences.std(ddof=1))
    assert not paired.significant  # uncorrected: a verdict needs its family's correction
    assert correct([paired], "alone")[0].significant
    # no seed in common, 3 runs a side: the permutation test's smallest two-sided p is 2/20 = 0.1
    unpaired = correct([compare(_series(treated[:3], [0, 1, 2]), _series(baseline[:3], [5, 6, 7]))], "u")[0]
    assert unpaired.test == UNPAIRED and not unpaired.significant and not unpaired.testable
    assert compare(_series([1.0], [0]), _series([0.5], [0])).p_value is None


def _series(values, seeds):
    import pandas as pd

    return pd.Series(list(values), index=seeds, dtype=float)


def test_ablation_table_numbers_marks_bold_and_holm_family(trials):
    table = ablation_table(trials, [TOP1, "retrieval/mean_recall", "structure/alignment"], "Downstream",
                           selected="+DFS")
    assert table.rows == ["baseline", "+DFS", "+GC", "+DFS+GC"]
    # one family: 3 compared configurations x 3 metrics
    assert table.family_size == 9
    gc = table.cells[("+GC", TOP1)]
    assert (gc.mean, gc.n) == (pytest.approx(np.mean(np.add(fx.BASELINE_TOP1, fx.GC_GAIN))), 10)
    assert gc.std == pytest.approx(np.std(np.add(fx.BASELINE_TOP1, fx.GC_GAIN), ddof=1))
    assert gc.comparison.p_value == pytest.approx(2 / 1024)
    assert gc.comparison.corrected_p == pytest.approx(9 * 2 / 1024)  # the smallest p: Holm's first step, x 9
    assert gc.mark == "*" and gc.comparison.family_size == 9
    dfs = table.cells[("+DFS", TOP1)]
    assert dfs.mark == "" and dfs.comparison.corrected_p > 0.5
    # +DFS+GC: 8 finished seeds; its top-1 gain is on every seed, but the smallest p at n = 8,
    # 2/256, times m = 9 is 0.07: it cannot pass, and it says so
    both = table.cells[("+DFS+GC", TOP1)]
    assert both.n == 8 and not both.comparison.testable and both.mark == ""
    assert both.comparison.certainty().startswith("not testable at n = 8 (smallest attainable p = 0.00781;")
    # lower is better for structure/alignment; tied best values are all bold (retrieval is equal per seed,
    # and +DFS+GC lacks two seeds)
    assert table.cells[("+DFS+GC", "structure/alignment")].best
    assert [table.cells[(row, "retrieval/mean_recall")].best for row in table.rows] == [True, True, True, False]
    markdown = table.to_markdown()
    assert "| +GC [batch 32] | 0.508 ± 0.018 (10) Δ +0.099\\* |" in markdown
    assert f"| +DFS [batch 32] {SELECTED_MARK} | 0.415 ± 0.018 (10) Δ +0.006 |" in markdown
    assert "| baseline | 0.409" in markdown and "family of m = 9" in markdown
    latex = table.to_latex(label="tab:test")
    assert "\\toprule" in latex and "$\\Delta$ +0.099$^{*}$" in latex and "m = 9" in latex
    assert "retrieval/mean\\_recall" in latex
    assert "font-weight: bold" in table.to_html()
    csv_rows = table.frame().set_index(["config", "metric"])
    assert csv_rows.loc[("+GC", TOP1), "verdict"] == "significant"
    assert csv_rows.loc[("+DFS", TOP1), "verdict"] == "not significant"
    assert csv_rows.loc[("+DFS+GC", TOP1), "verdict"] == "not testable"
    assert csv_rows.loc[("+DFS", TOP1), "selected"] and csv_rows.loc[("+GC", TOP1), "batch_size"] == 32


def test_selection_uses_the_validation_metric_and_falls_back_visibly(trials):
    selection = select_configuration(trials, TOP1, "max")
    # on test, +DFS+GC and +GC lead; validation favours +DFS, and validation decides
    assert selection.config == "+DFS" and selection.by_metric == f"val/{TOP1}" and selection.note == ""
    old = trials.drop(columns=[f"val/{TOP1}"])
    fallback = select_configuration(old, TOP1, "max")
    assert fallback.config == "+DFS+GC" and fallback.by_metric == TOP1
    assert f"no val/{TOP1}" in fallback.note


def test_reference_table_matches_paper_data_sets(tmp_path):
    specs = [fx.TrialSpec({"regularizers.gc": gc, "train.seed": seed},
                          {"zeroshot/cifar10/top1": 0.40 + gc / 10, "zeroshot/svhn/top1": 0.2})
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


def test_info_gap_cells_resolve_unnamed_keys_to_the_base(tmp_path):
    from analysis.info_gap import cell_trials

    root = fx.write_info_gap_study(tmp_path / "gap")
    trials, study = analysis.load(root), read_study(root)
    # "pressure alone" is not every arm with pressure: gc keeps the base's 0
    alone = cell_trials(trials, study, {"data.info_gap": 1.0, "regularizers.align": 1.0})
    assert len(alone) == 8 and (alone["regularizers.gc"] == 0).all() and (alone["data.info_gap"] == 1).all()
    with_gc = cell_trials(trials, study, {"data.info_gap": 1.0, "regularizers.align": 1.0, "regularizers.gc": 0.5})
    assert len(with_gc) == 8 and (with_gc["regularizers.gc"] == 0.5).all()


def test_an_option_that_changes_a_regularizer_keeps_its_arm_apart(tmp_path):
    arms = [{"align": 1.0}, {"align": 1.0, "dfs": 0.5}, {"align": 1.0, "dfs": 0.5, "dfs_separation": False}]
    specs = [fx.TrialSpec({"regularizers": arm, "train.seed": seed}, {TOP1: 0.5}) for arm in arms for seed in (0, 1)]
    search = {**fx.ablation_search(), "seeds": [0, 1], "space": {"regularizers": {"type": "grid", "values": arms}}}
    trials = analysis.load(fx.write_results_dir(tmp_path / "arms", search, specs))
    assert sorted(trials["config"].unique()) == ["+DFS w/o separation+align", "+DFS+align", "+align"]
