"""The report's opening: plain sentences on which regularizer changed which metric, by how much, and
with what certainty, computed from an ablation table; and the state of the study's trials."""

from __future__ import annotations

import math

import pandas as pd

from analysis.metrics import higher_is_better, readable
from analysis.tables import AblationTable, Cell, format_value


def _change(metric: str, cell: Cell) -> str:
    comparison = cell.comparison
    before = cell.mean - comparison.delta
    verb = "raised" if comparison.delta > 0 else "lowered"
    relative = "" if math.isnan(comparison.relative) else f", {comparison.relative:+.1%}"
    return (f"{verb} {readable(metric)} from {format_value(before)} to {format_value(cell.mean)} "
            f"(Δ {comparison.delta:+.3f}{relative}; {comparison.certainty()})")


def _verdict(metric: str, cell: Cell) -> str:
    """'helped' / 'hurt' / 'changed' for a significant change, by the metric's better direction."""
    direction = higher_is_better(metric)
    if direction is None:
        return "changed"
    return "helped" if (cell.comparison.delta > 0) == direction else "hurt"


def configuration_sentences(table: AblationTable) -> list[str]:
    """One sentence per non-baseline configuration: its significant changes, then what did not move."""
    sentences = []
    for row in table.rows:
        cells = {metric: table.cells[(row, metric)] for metric in table.metrics if (row, metric) in table.cells}
        compared = {metric: cell for metric, cell in cells.items() if cell.comparison is not None}
        if not compared:
            continue
        significant = {metric: cell for metric, cell in compared.items() if cell.comparison.significant}
        parts = [f"{_verdict(metric, cell)}: {_change(metric, cell)}" for metric, cell in significant.items()]
        unchanged = [metric for metric in compared if metric not in significant]
        if unchanged:
            detail = "; ".join(f"{metric} Δ {compared[metric].comparison.delta:+.3f}, "
                               f"{compared[metric].comparison.certainty()}" for metric in unchanged)
            parts.append(f"no significant change in {', '.join(unchanged)} ({detail})")
        sentences.append(f"{row} vs. baseline — " + "; ".join(parts) + ".")
    return sentences


def best_configuration_sentence(table: AblationTable, metric: str, mode: str) -> str | None:
    """Which configuration reached the best mean of the study's metric, with its n."""
    means = {row: table.cells[(row, metric)] for row in table.rows
             if (row, metric) in table.cells and table.cells[(row, metric)].n > 0}
    if not means:
        return None
    pick = max if mode == "max" else min
    best = pick(means, key=lambda row: means[row].mean)
    cell = means[best]
    caution = " (a single run: treat with care)" if cell.n < 2 else ""
    return (f"Best configuration by the study's metric {metric} ({mode}): {best}, "
            f"{format_value(cell.mean)} ± {format_value(cell.std)} over {cell.n} seed(s){caution}.")


def status_sentence(trials: pd.DataFrame, missing: list[str], expected: int | None) -> str:
    counts = trials["status"].value_counts() if not trials.empty else pd.Series(dtype=int)
    parts = [f"{counts.get(status, 0)} {status.replace('_', ' ')}"
             for status in ("finished", "stopped_early", "failed", "incomplete")]
    expected_text = f" of {expected} expected" if expected is not None else ""
    num_missing = max(expected - len(trials), 0) if expected is not None else len(missing)
    return (f"{len(trials)} trial directories{expected_text}: " + ", ".join(parts)
            + f"; {num_missing} missing. Only finished trials enter the tables.")
