"""The report's opening: which configuration the validation metric selects, whether it beats the baseline
on test (the study's one primary comparison), and plain sentences on which regularizer changed which
metric, with the Holm-corrected p, n and d_z of each; and the state of the study's trials.

A sentence says "helped" or "hurt" only for a comparison whose corrected p is below ALPHA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.configs import with_batch_size
from analysis.metrics import higher_is_better, readable, validation_name
from analysis.stats import Comparison, compare, correct, per_seed
from analysis.tables import AblationTable, Cell, format_value

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


def selection_sentence(selection: Selection, batch_size: int | None) -> str:
    if selection.config is None:
        return f"No configuration could be selected: {selection.note}."
    text = (f"Selected configuration (best mean of {selection.by_metric} over seeds): "
            f"{with_batch_size(selection.config, batch_size)}, {format_value(selection.value)} over "
            f"{selection.seeds} seed(s).")
    return text + (f" Note: {selection.note}." if selection.note else "")


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


def primary_sentence(comparison: Comparison | None, selection: Selection, metric: str,
                     untestable: str | None) -> str:
    if selection.config is None:
        return "Primary comparison: none (nothing was selected)."
    if comparison is None:
        return (f"Primary comparison: the selection is {selection.config}, which is a baseline (or has no "
                f"baseline in its context), so no regularized configuration beat the baseline on validation.")
    head = (f"Primary comparison ({selection.config} vs. baseline on {metric}, test split, "
            f"{'one-sided' if comparison.alternative != 'two-sided' else 'two-sided'}, a family of 1)")
    if untestable:
        return f"{head}: {untestable}."
    if not comparison.testable:
        return f"{head}: Δ {comparison.delta:+.3f}; {comparison.certainty()}."
    verdict = _verdict(metric, comparison) if comparison.significant else "no significant difference"
    return f"{head}: {verdict}, Δ {comparison.delta:+.3f} ({comparison.certainty()})."


def _change(metric: str, cell: Cell) -> str:
    comparison = cell.comparison
    before = cell.mean - comparison.delta
    verb = "raised" if comparison.delta > 0 else "lowered"
    relative = "" if math.isnan(comparison.relative) else f", {comparison.relative:+.1%}"
    return (f"{verb} {readable(metric)} from {format_value(before)} to {format_value(cell.mean)} "
            f"(Δ {comparison.delta:+.3f}{relative}; {comparison.certainty()})")


def _verdict(metric: str, comparison: Comparison) -> str:
    """'helped' / 'hurt' / 'changed' for a significant (corrected) change, by the metric's better direction."""
    direction = higher_is_better(metric)
    if direction is None:
        return "changed"
    return "helped" if (comparison.delta > 0) == direction else "hurt"


def configuration_sentences(table: AblationTable, untestable: str | None = None) -> list[str]:
    """One sentence per non-baseline configuration: its significant changes (Holm within the table), then
    what did not move. With a failed test-bed check, every sentence says why nothing can be concluded."""
    sentences = []
    for row in table.rows:
        cells = {metric: table.cells[(row, metric)] for metric in table.metrics if (row, metric) in table.cells}
        # a metric the baseline lacks (DFS's independent-feature probes) has no difference to state
        compared = {metric: cell for metric, cell in cells.items()
                    if cell.comparison is not None and math.isfinite(cell.comparison.delta)}
        if not compared:
            continue
        label = table.row_label(row)
        if untestable:  # the reason is stated once, in the test-bed paragraph above the bullets
            deltas = ", ".join(f"{metric} Δ {cell.comparison.delta:+.3f}" for metric, cell in compared.items())
            sentences.append(f"{label} vs. baseline — not testable (test-bed check failed; see above): {deltas}.")
            continue
        significant = {metric: cell for metric, cell in compared.items() if cell.comparison.significant}
        parts = [f"{_verdict(metric, cell.comparison)}: {_change(metric, cell)}"
                 for metric, cell in significant.items()]
        rest = [metric for metric in compared if metric not in significant]
        unchanged = [metric for metric in rest if compared[metric].comparison.testable]
        untested = [metric for metric in rest if metric not in unchanged]
        for words, metrics in (("no significant change in", unchanged), ("not testable:", untested)):
            if metrics:
                detail = "; ".join(f"{metric} Δ {compared[metric].comparison.delta:+.3f}, "
                                   f"{compared[metric].comparison.certainty()}" for metric in metrics)
                parts.append(f"{words} {', '.join(metrics)} ({detail})")
        sentences.append(f"{label} vs. baseline — " + "; ".join(parts) + ".")
    return sentences


def status_sentence(trials: pd.DataFrame, missing: list[str], expected: int | None) -> str:
    counts = trials["status"].value_counts() if not trials.empty else pd.Series(dtype=int)
    parts = [f"{counts.get(status, 0)} {status.replace('_', ' ')}"
             for status in ("finished", "stopped_early", "failed", "incomplete")]
    expected_text = f" of {expected} expected" if expected is not None else ""
    num_missing = max(expected - len(trials), 0) if expected is not None else len(missing)
    return (f"{len(trials)} trial directories{expected_text}: " + ", ".join(parts)
            + f"; {num_missing} missing. Only finished trials enter the tables.")
