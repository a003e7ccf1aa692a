"""The information-gap section: does alignment pressure remove modality-specific information, and do
the regularizers give some of it back? (Theorem 3.1 of the paper; see docs/regularizers.md.)

Two families of paired comparisons, each at one information gap and paired over seeds:
- pressure: alignment weight a > 0 against a = 0, neither with other regularizers;
- recovery: a regularizer setting (+GC, +DFS, ...) at a > 0 against no regularizer at the same a.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.configs import REGULARIZER_KEYS, REGULARIZER_NAMES
from analysis.metrics import INFO_GAP_METRICS, MODALITY_SPECIFIC_PROBES, present, readable
from analysis.stats import ALPHA, compare, format_p, per_seed

ALIGN_KEY = "regularizers.align"
GAP_KEY = "data.info_gap"
NO_REGULARIZER = "none"
LARGE_EFFECT = 0.8  # Cohen's conventional threshold for a large d


def is_info_gap_study(searched_keys: list[str]) -> bool:
    return GAP_KEY in searched_keys or ALIGN_KEY in searched_keys


@dataclass(frozen=True)
class InfoGapAnalysis:
    effects: pd.DataFrame  # one row per (comparison, metric): means, delta, cohens_d, p_value, n
    verdict: str  # the sentence that says whether the predicted effect appears
    findings: list[str]  # supporting sentences with the numbers

    def table(self) -> pd.DataFrame:
        """Wide form for the report: rows = (info gap, comparison), columns = metrics."""
        if self.effects.empty:
            return pd.DataFrame()
        cells = self.effects.assign(cell=self.effects.apply(_cell_text, axis=1))
        wide = cells.pivot_table(index=["info_gap", "comparison"], columns="metric", values="cell",
                                 aggfunc="first", sort=False)
        return wide.reindex(columns=[m for m in INFO_GAP_METRICS if m in wide.columns])


def _cell_text(row: pd.Series) -> str:
    p_text = "p n/a" if math.isnan(row["p_value"]) else format_p(row["p_value"])
    d_text = "d n/a" if math.isnan(row["cohens_d"]) else f"d {row['cohens_d']:+.2f}"
    mark = "*" if row["p_value"] < ALPHA else ""
    means = f"{row['treated_mean']:.3f} vs {row['reference_mean']:.3f}"
    return f"{means}: Δ {row['delta']:+.3f}{mark} ({d_text}, {p_text}, n={row['n']})"


def _other_regularizers(row: pd.Series) -> str:
    active = [REGULARIZER_NAMES[key] for key in REGULARIZER_KEYS if key != ALIGN_KEY and (row.get(key) or 0) > 0]
    return "+" + "+".join(active) if active else NO_REGULARIZER


def _effect_rows(treated: pd.DataFrame, reference: pd.DataFrame, metrics: list[str], **labels) -> list[dict]:
    rows = []
    for metric in metrics:
        treated_values = per_seed(treated[metric], treated["seed"])
        reference_values = per_seed(reference[metric], reference["seed"])
        if treated_values.empty or reference_values.empty:
            continue
        comparison = compare(treated_values, reference_values)
        rows.append({
            **labels, "metric": metric, "treated_mean": treated_values.mean(),
            "reference_mean": reference_values.mean(), "delta": comparison.delta,
            "cohens_d": math.nan if comparison.cohens_d is None else comparison.cohens_d,
            "p_value": math.nan if comparison.p_value is None else comparison.p_value, "n": comparison.n_pairs,
        })
    return rows


def info_gap_effects(trials: pd.DataFrame) -> pd.DataFrame:
    """Every pressure and recovery comparison (see the module docstring) for the metrics present."""
    finished = trials[trials["status"] == "finished"].copy()
    finished["others"] = finished.apply(_other_regularizers, axis=1)
    metrics = present(INFO_GAP_METRICS, finished.columns)
    rows: list[dict] = []
    for gap, at_gap in finished.groupby(GAP_KEY):
        plain = at_gap[at_gap["others"] == NO_REGULARIZER]
        unpressured = plain[plain[ALIGN_KEY] == 0]
        for align, pressured in plain[plain[ALIGN_KEY] > 0].groupby(ALIGN_KEY):
            rows += _effect_rows(pressured, unpressured, metrics, info_gap=gap, kind="pressure", align=align,
                                 comparison=f"align {align:g} vs 0")
            regularized = at_gap[(at_gap[ALIGN_KEY] == align) & (at_gap["others"] != NO_REGULARIZER)]
            for others, group in regularized.groupby("others"):
                rows += _effect_rows(group, pressured, metrics, info_gap=gap, kind="recovery", align=align,
                                     comparison=f"{others} at align {align:g} vs none")
    return pd.DataFrame.from_records(rows)


def analyse_info_gap(trials: pd.DataFrame) -> InfoGapAnalysis:
    effects = info_gap_effects(trials)
    if effects.empty:
        return InfoGapAnalysis(effects, "The study has no pair of configurations that differ only in alignment "
                                        "pressure, so the predicted effect cannot be tested.", [])
    probes = effects[effects["metric"].isin(MODALITY_SPECIFIC_PROBES)]
    # Theorem 3.1 predicts the cost only where the modalities carry different information.
    gapped = probes[probes["info_gap"] > 0] if (probes["info_gap"] > 0).any() else probes
    pressure = gapped[gapped["kind"] == "pressure"]
    recovery = gapped[gapped["kind"] == "recovery"]
    findings = [_finding(row) for _, row in pd.concat([pressure, recovery]).iterrows()]
    return InfoGapAnalysis(effects, _verdict(pressure, recovery), findings)


def _finding(row: pd.Series) -> str:
    p_text = "p not available" if math.isnan(row["p_value"]) else format_p(row["p_value"])
    d_text = "" if math.isnan(row["cohens_d"]) else f"Cohen's d = {row['cohens_d']:+.2f}, "
    return (f"At information gap {row['info_gap']:g}, {row['comparison']}: {row['metric']} "
            f"{row['reference_mean']:.3f} → {row['treated_mean']:.3f} (Δ {row['delta']:+.3f}; {d_text}{p_text}, "
            f"n = {row['n']} paired seeds).")


def _significant(frame: pd.DataFrame, sign: int) -> pd.DataFrame:
    return frame[(frame["p_value"] < ALPHA) & (frame["delta"] * sign > 0)]


def _consistent_drop(probe: str, rows: pd.DataFrame) -> str:
    deltas = ", ".join(f"{row.delta:+.3f} at gap {row.info_gap:g}" for row in rows.itertuples())
    return (f"{readable(probe)} drops at every information gap with a large effect (Δ {deltas}; "
            f"Cohen's d <= -{LARGE_EFFECT:g})")


def _verdict(pressure: pd.DataFrame, recovery: pd.DataFrame) -> str:
    if pressure.empty:
        return ("The predicted effect cannot be judged: no modality-specific probe was measured with and "
                "without alignment pressure.")
    lowered, raised = _significant(pressure, -1), _significant(pressure, +1)
    summary = (f"{len(lowered)} of {len(pressure)} pressure comparisons on the modality-specific probes show a "
               f"significant drop (p < {ALPHA}), {len(raised)} a significant rise")
    if len(lowered) == 0 and len(raised) == 0:
        # Nothing significant, but a probe that drops by a large effect at every gap is not the
        # same finding as no drop at all: say which probe, and which does not move.
        by_probe = dict(iter(pressure.groupby("metric", sort=False)))
        consistent = [probe for probe, rows in by_probe.items() if (rows["cohens_d"] <= -LARGE_EFFECT).all()]
        if consistent:
            drops = "; ".join(_consistent_drop(probe, by_probe[probe]) for probe in consistent)
            others = [readable(probe) for probe in by_probe if probe not in consistent]
            rest = f"; the {' and the '.join(others)} does not drop consistently" if others else ""
            return (f"The predicted direction, not established: the {drops}, but none of the {len(pressure)} "
                    f"pressure comparisons on the modality-specific probes is significant (p < {ALPHA}) with "
                    f"n = {int(pressure['n'].min())} paired seeds{rest}.")
    if len(lowered) == 0 or len(raised) >= len(lowered):
        return f"The predicted effect does not appear: {summary}."
    if recovery.empty:
        return (f"The first half of the predicted effect appears — alignment pressure lowers modality-specific "
                f"probe accuracy ({summary}); no regularizer was run under pressure to test recovery.")
    recovered = _significant(recovery, +1)
    recovery_text = (f"{len(recovered)} of {len(recovery)} regularizer comparisons under pressure recover probe "
                     f"accuracy significantly (mean Δ {recovery['delta'].mean():+.3f})")
    if len(recovered) > 0 and recovery["delta"].mean() > 0:
        return f"The predicted effect appears: {summary}; {recovery_text}."
    return f"Alignment pressure lowers modality-specific probe accuracy ({summary}), but {recovery_text}."
