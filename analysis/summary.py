"""The report's opening: which configuration the validation metric selects, whether it beats the baseline
on test (the study's one primary comparison, the call-out's verdict), the significance table of every
configuration against its baseline with the Holm-corrected p, n and d_z, and the state of the study's trials.

A verdict says "helped" or "hurt" only for a comparison whose corrected p is below ALPHA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.metrics import higher_is_better, validation_name
from analysis.stats import Comparison, compare, correct, per_seed
from analysis.tables import AblationTable, format_value

PRIMARY_FAMILY = "primary comparison"


@dataclass(frozen=True)
class Selection:
    config: str | None  # None when no configuration has the metric
    by_metric: str  # the metric the choice was made on (val/<metric>, or the test metric as a fallback)
    value: float
    seeds: int
    note: str  # "" when chosen on validation data; else why not


def select_configuration(trials: pd.DataFrame, metric: str, mode: str) -> Selection:
    """The configuration with the best mean over seeds of val/<metric> (finished trials only). Results
    without validation metrics (written before they existed) fall back to the test metric, with a note."""
    finished = trials[trials["status"] == "finished"]
    by_metric, note = validation_name(metric), ""
    if by_metric not in finished or finished[by_metric].dropna().empty:
        by_metric = metric
        note = (f"these results have no {validation_name(metric)}, so the configuration was selected on the test "
                f"metric {metric} itself, which flatters it")
    if by_metric not in finished or finished[by_metric].dropna().empty:
        return Selection(None, by_metric, math.nan, 0, f"no finished trial reports {metric}")
    means = {config: per_seed(group[by_metric], group["seed"]) for config, group in finished.groupby("config")}
    means = {config: values for config, values in means.items() if len(values)}
    pick = max if mode == "max" else min
    best = pick(means, key=lambda config: means[config].mean())
    return Selection(best, by_metric, float(means[best].mean()), len(means[best]), note)


def primary_comparison(trials: pd.DataFrame, selection: Selection, metric: str, mode: str) -> Comparison | None:
    """The selected configuration vs the baseline of its context on the test metric, one-sided in the
    direction the study optimises, a family of one; None when the baseline itself was selected or absent."""
    finished = trials[trials["status"] == "finished"]
    if selection.config is None or metric not in finished:
        return None
    chosen = finished[finished["config"] == selection.config]
    if chosen["is_baseline"].iloc[0]:
        return None
    baseline = finished[finished["is_baseline"] & (finished["context"] == chosen["context"].iloc[0])]
    if baseline.empty:
        return None
    comparison = compare(per_seed(chosen[metric], chosen["seed"]), per_seed(baseline[metric], baseline["seed"]),
                         "greater" if mode == "max" else "less")
    return correct([comparison], PRIMARY_FAMILY)[0]


def _verdict(metric: str, comparison: Comparison) -> str:
    """'helped' / 'hurt' / 'changed' for a significant (corrected) change, by the metric's better direction."""
    direction = higher_is_better(metric)
    if direction is None:
        return "changed"
    return "helped" if (comparison.delta > 0) == direction else "hurt"


def status_sentence(trials: pd.DataFrame, missing: list[str], expected: int | None) -> str:
    counts = trials["status"].value_counts() if not trials.empty else pd.Series(dtype=int)
    parts = [f"{counts.get(status, 0)} {status.replace('_', ' ')}"
             for status in ("finished", "not_trained", "stopped_early", "failed", "incomplete")]
    expected_text = f" of {expected} expected" if expected is not None else ""
    num_missing = max(expected - len(trials), 0) if expected is not None else len(missing)
    return (f"{len(trials)} trial directories{expected_text}: " + ", ".join(parts)
            + f"; {num_missing} missing. Only finished trials enter the tables.")


# --------------------------------------------------------------------------- the answer, first


@dataclass(frozen=True)
class Answer:
    """What a study found, in the order a reader asks: which configuration, with which values, how good on
    test against the baseline, and whether that difference survives the corrected test."""

    selection: Selection
    values: dict[str, object]  # the selected configuration's searched values (seed aside)
    batch_size: int | None
    metric: str  # the study's (test) metric
    mean: float  # the selected configuration's mean over seeds on the test metric
    interval: tuple[float, float] | None  # its 95% t interval over seeds (None below 2 seeds)
    baseline_mean: float | None
    baseline_interval: tuple[float, float] | None
    comparison: Comparison | None
    verdict: str  # one sentence, from the Holm-corrected comparison (or why there is none)
    # the verdict is a pre-registered test's: no configuration is "best", so no selection is shown
    preregistered: bool = False

    def values_text(self) -> str:
        parts = [f"{key} = {value:.4g}" if isinstance(value, float) else f"{key} = {value}"
                 for key, value in self.values.items()]
        if self.batch_size is not None and any(key.startswith("regularizers.") for key in self.values):
            parts.append(f"at batch size {self.batch_size}")
        return ", ".join(parts) if parts else "the base configuration"

    def metric_text(self) -> str:
        text = f"{self.metric} {_with_interval(self.mean, self.interval)} on test"
        if self.baseline_mean is not None and self.selection.config is not None and self.comparison is not None:
            text += (f" vs. baseline {_with_interval(self.baseline_mean, self.baseline_interval)} "
                     f"(Δ {self.comparison.delta:+.3f})")
        return text + f", mean over {self.selection.seeds} seed(s)"

    def lines(self) -> list[str]:
        """The answer as the terminal prints it at the end of a run."""
        if self.preregistered:
            return [f"verdict: {self.verdict}"]
        if self.selection.config is None:
            return [f"best configuration: none ({self.selection.note})"]
        return [f"best configuration (selected on {self.selection.by_metric}, mean over seeds): "
                f"{self.selection.config} — {self.values_text()}",
                f"  {self.metric_text()}",
                f"  verdict: {self.verdict}"]


def _with_interval(mean: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return format_value(mean)
    return f"{format_value(mean)} [95% CI {format_value(interval[0])}, {format_value(interval[1])}]"


def mean_interval(values: pd.Series) -> tuple[float, tuple[float, float] | None]:
    """Mean over seeds and its 95% t interval (None with fewer than 2 seeds or no spread)."""
    from scipy import stats

    values = values.dropna()
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2 or float(values.std(ddof=1)) == 0.0:
        return mean, None
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=float(values.sem()))
    return mean, (float(low), float(high))


def configuration_values(trials: pd.DataFrame, config: str, keys: list[str]) -> dict[str, object]:
    """The searched values of one configuration (the same on every seed), by dotted key."""
    row = trials[trials["config"] == config].iloc[0]
    values: dict[str, object] = {}
    for key in keys:
        if key in row.index and key != "train.seed":
            value = row[key]
            values[key] = value.item() if hasattr(value, "item") else value
    return values


def study_answer(trials: pd.DataFrame, metric: str, mode: str, searched_keys: list[str],
                 batch_size: int | None, untestable: str | None = None,
                 verdict: str | None = None) -> Answer:
    """The Answer of a loaded study; `verdict` replaces the generic one (a pre-registered primary test)."""
    selection = select_configuration(trials, metric, mode)
    comparison = primary_comparison(trials, selection, metric, mode)
    finished = trials[trials["status"] == "finished"]
    values, mean, interval, baseline_mean, baseline_interval = {}, math.nan, None, None, None
    if selection.config is not None and metric in finished:
        chosen = finished[finished["config"] == selection.config]
        values = configuration_values(finished, selection.config, searched_keys)
        mean, interval = mean_interval(per_seed(chosen[metric], chosen["seed"]))
        baseline = finished[finished["is_baseline"] & (finished["context"] == chosen["context"].iloc[0])]
        if not baseline.empty:
            baseline_mean, baseline_interval = mean_interval(per_seed(baseline[metric], baseline["seed"]))
    preregistered = verdict is not None
    if verdict is None:
        verdict = _verdict_sentence(comparison, selection, metric, untestable)
    return Answer(selection, values, batch_size, metric, mean, interval, baseline_mean, baseline_interval,
                  comparison, verdict, preregistered)


def _verdict_sentence(comparison: Comparison | None, selection: Selection, metric: str,
                      untestable: str | None) -> str:
    """One sentence from the Holm-corrected primary comparison; never a verdict from an uncorrected p."""
    if selection.config is None:
        return "no verdict — nothing could be selected."
    if untestable:  # a failed test bed says more than a missing baseline: it is why there is none
        return f"no verdict — {untestable}."
    if comparison is None:
        return (f"the baseline itself was selected on {selection.by_metric}: no regularized configuration beat it "
                "on validation." if "baseline" in selection.config else
                "no verdict — the selected configuration has no baseline in its context.")
    if not comparison.testable:
        return f"no verdict — {comparison.certainty()}."
    if comparison.significant:
        return (f"{selection.config} {_verdict(metric, comparison)} {metric} against the baseline "
                f"({comparison.certainty()}).")
    return f"no significant difference from the baseline on {metric} ({comparison.certainty()})."


def significance_frame(tables: list[AblationTable], untestable: str | None = None) -> pd.DataFrame:
    """One row per comparison with the baseline: the table (its Holm family), metric, Δ, corrected p with the
    family size m, n, d_z with its 95% interval, and the result in words (a verdict only for corrected p < ALPHA).
    Indexed by the configuration as the tables label it."""
    records = []
    for table in tables:
        for row in table.rows:
            for metric in table.metrics:
                cell = table.cells.get((row, metric))
                comparison = cell.comparison if cell is not None else None
                if comparison is None or not math.isfinite(comparison.delta):
                    continue
                if untestable:
                    result = "no verdict (test-bed check failed)"
                elif comparison.significant:
                    result = _verdict(metric, comparison)
                elif comparison.testable:
                    result = "no significant change"
                else:
                    result = f"not testable at n = {comparison.n_pairs}"
                corrected = comparison.corrected_p
                records.append({
                    "configuration": table.row_label(row),
                    "table": table.title,
                    "metric": metric,
                    "Δ": f"{comparison.delta:+.3f}",
                    "corrected p (m)": (f"{'<0.001' if corrected < 0.001 else f'{corrected:.3f}'} "
                                        f"({comparison.family_size})" if corrected is not None else "–"),
                    "n": comparison.n_pairs,
                    "d_z [95% CI]": _effect_cell(comparison),
                    "result": result,
                })
    if not records:
        return pd.DataFrame()
    return pd.DataFrame.from_records(records).set_index("configuration")


def _effect_cell(comparison: Comparison) -> str:
    if comparison.effect is None:
        return "–"
    if comparison.effect_ci is None:
        return f"{comparison.effect:+.2f}"
    low, high = comparison.effect_ci
    return f"{comparison.effect:+.2f} [{low:+.2f}, {high:+.2f}]"
