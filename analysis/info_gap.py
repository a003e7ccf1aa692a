"""The information-gap section: does alignment pressure cost modality-specific information more where
the modalities differ (Theorem 3.1 of the paper; see docs/regularizers.md), and do the regularizers give
some of it back?

With a `hypothesis:` block in the study file (trainers.study_spec.HypothesisSpec) the section is one
pre-registered test: the primary comparison on each of its metrics forms one Holm family, and the
section leads with its verdict ("interaction shown (corrected p = ..., n = ...)" or "no interaction
detected", with the test's power); secondary comparisons form a second Holm family, labelled as such.
Before either, the test-bed checks (analysis.checks) must pass in the primary's reference cell (no
pressure at the high gap): the shared class far above chance, the modality-specific probes above it.

Without a hypothesis the comparisons are exploratory, in two Holm families (pressure: align > 0 vs 0
at one gap; recovery: a regularizer under pressure vs pressure alone), and the section says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis.checks import BedCheck, not_testable, probe_check
from analysis.configs import NO_OTHER_REGULARIZER, REGULARIZER_KEYS, regularizers_beside_align
from analysis.metrics import MODALITY_SPECIFIC_PROBES, SHARED_CLASS_PROBE, info_gap_metrics, readable
from analysis.stats import (
    ALPHA,
    Comparison,
    compare,
    correct,
    detectable_effect,
    paired_comparison,
    per_seed,
    sidedness,
    sign_flip_power,
)
from trainers.study_spec import ComparisonSpec, HypothesisSpec, StudySpec, resolved_cell

ALIGN_KEY = "regularizers.align"
GAP_KEY = "data.info_gap"
PRIMARY_FAMILY = "pre-registered primary"
SECONDARY_FAMILY = "pre-registered secondary"
POWER_SIMULATIONS = 4000


def is_info_gap_study(searched: list[str]) -> bool:
    return GAP_KEY in searched or ALIGN_KEY in searched


@dataclass(frozen=True)
class ContrastResult:
    family: str
    name: str
    metric: str
    comparison: Comparison
    means: dict[str, float]  # cell label -> mean over the paired seeds


@dataclass(frozen=True)
class InfoGapAnalysis:
    verdict: str  # the section's first sentence
    findings: list[str]  # every result with its corrected p, n and d_z
    results: list[ContrastResult] = field(default_factory=list)
    checks: list[BedCheck] = field(default_factory=list)
    preregistered: bool = False

    def table(self) -> pd.DataFrame:
        """Rows = (family, comparison), columns = metrics; each cell Δ, d_z [CI], corrected p, m, n."""
        if not self.results:
            return pd.DataFrame()
        records = [{"family": r.family, "comparison": r.name, "metric": r.metric, "cell": _cell_text(r.comparison)}
                   for r in self.results]
        frame = pd.DataFrame.from_records(records)
        wide = frame.pivot_table(index=["family", "comparison"], columns="metric", values="cell",
                                 aggfunc="first", sort=False)
        return wide.reindex(columns=list(dict.fromkeys(frame["metric"])))


def _cell_text(comparison: Comparison) -> str:
    mark = "*" if comparison.significant else ""
    return f"Δ {comparison.delta:+.3f}{mark} ({comparison.certainty()})"


# --------------------------------------------------------------------------- cells and contrasts


def _cell_label(cell: dict[str, Any], batch_size: int | None = None) -> str:
    """'info_gap=1, align=1, dfs=0.5 [batch 32]': a cell with weights says the batch size they were used at."""
    text = ", ".join(f"{key.split('.')[-1]}={value:g}" if isinstance(value, float) and not isinstance(value, bool)
                     else f"{key.split('.')[-1]}={value}" for key, value in cell.items())
    has_weight = any(key in REGULARIZER_KEYS and value for key, value in cell.items())
    return f"{text} [batch {batch_size}]" if has_weight and batch_size is not None else text


def cell_trials(trials: pd.DataFrame, study: StudySpec, cell: dict[str, Any]) -> pd.DataFrame:
    """The finished trials of one hypothesis cell: every searched key at the cell's resolved value."""
    resolved = resolved_cell(study.base, cell)
    keys = [key for key in dict.fromkeys([*study.search.searched_keys, *cell]) if key in trials]
    finished = trials[trials["status"] == "finished"]
    mask = pd.Series(True, index=finished.index)
    for key in keys:
        want = resolved.get(key)
        mask &= finished[key].map(lambda value, want=want: _same(value, want))
    return finished[mask]


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(value, bool):
        return bool(value) == bool(want) if isinstance(value, bool | int | float) else False
    if isinstance(want, int | float) and isinstance(value, int | float):
        return math.isclose(float(value), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return value == want


def _cell_values(trials: pd.DataFrame, study: StudySpec, cell: dict[str, Any], metric: str) -> pd.Series:
    subset = cell_trials(trials, study, cell)
    if metric not in subset:
        return pd.Series(dtype=float)
    return per_seed(subset[metric], subset["seed"])


def contrast(trials: pd.DataFrame, study: StudySpec, spec: ComparisonSpec, metric: str) -> tuple[Comparison, dict]:
    """The per-seed contrast of `spec` on `metric` (seeds present in every cell), tested, uncorrected."""
    parts = [("effect", spec.effect)] + ([("minus", spec.minus)] if spec.minus is not None else [])
    series: dict[str, pd.Series] = {}
    labels: dict[str, dict[str, Any]] = {}
    for name, part in parts:
        for side in ("treated", "reference"):
            series[f"{name}.{side}"] = _cell_values(trials, study, getattr(part, side), metric)
            labels[f"{name}.{side}"] = getattr(part, side)
    common = None
    for values in series.values():
        common = values.index if common is None else common.intersection(values.index)
    per = {key: values[common] for key, values in series.items()}
    differences = per["effect.treated"] - per["effect.reference"]
    if spec.minus is not None:
        differences = differences - (per["minus.treated"] - per["minus.reference"])
    comparison = paired_comparison(differences.to_numpy(), spec.alternative,
                                   float(per["effect.reference"].mean()) if len(common) else math.nan)
    means = {_cell_label(labels[key], resolved_cell(study.base, labels[key]).get("train.batch_size")):
             float(values.mean()) if len(values) else math.nan for key, values in per.items()}
    return comparison, means


def _family(trials: pd.DataFrame, study: StudySpec, specs: list[ComparisonSpec], family: str) -> list[ContrastResult]:
    raw = [(spec, metric, *contrast(trials, study, spec, metric)) for spec in specs for metric in spec.metrics]
    corrected = correct([comparison for _, _, comparison, _ in raw], family)
    return [ContrastResult(family, spec.name, metric, comparison, means)
            for (spec, metric, _, means), comparison in zip(raw, corrected, strict=True)]


# --------------------------------------------------------------------------- the pre-registered test


def bed_checks(trials: pd.DataFrame, study: StudySpec, hypothesis: HypothesisSpec) -> list[BedCheck]:
    """In the primary's reference cell (no pressure at the high gap): the shared class far above chance
    and every modality-specific probe the primary tests above chance."""
    cell = hypothesis.primary.effect.reference
    subset = cell_trials(trials, study, cell)
    where = _cell_label(cell)
    dataset, eval_size = str(study.base.data.dataset), int(getattr(study.base.data, "eval_size", 0) or 0)
    checks = [probe_check(subset, SHARED_CLASS_PROBE, where, dataset, eval_size, far=True)]
    checks += [probe_check(subset, metric, where, dataset, eval_size, far=False)
               for metric in hypothesis.primary.metrics if metric != SHARED_CLASS_PROBE]
    return [check for check in checks if check is not None]


def _finding(result: ContrastResult) -> str:
    means = "; ".join(f"{label}: {value:.3f}" for label, value in result.means.items())
    return (f"[{result.family}] {result.name}, {readable(result.metric)}: Δ {result.comparison.delta:+.3f} "
            f"({result.comparison.certainty()}; cell means {means}).")


def primary_verdict(primary: list[ContrastResult], hypothesis: HypothesisSpec, untestable: str | None) -> str:
    name = hypothesis.primary.name
    if untestable:
        return f"Pre-registered test ({name}): {untestable}."
    if not primary or all(r.comparison.p_value is None for r in primary):
        reason = primary[0].comparison.certainty() if primary else "no metric measured"
        return f"Pre-registered test ({name}): {reason}."
    shown = [r for r in primary if r.comparison.significant]
    m = len(primary)
    if shown:
        parts = "; ".join(f"on the {readable(r.metric)}: Δ {r.comparison.delta:+.3f}, corrected "
                          f"{_p(r.comparison)}, n = {r.comparison.n_pairs}, {r.comparison.effect_text()}"
                          for r in shown)
        return f"Pre-registered test ({name}): interaction shown ({parts}; Holm over m = {m})."
    untestable_rows = [r for r in primary if not r.comparison.testable]
    if untestable_rows:
        return f"Pre-registered test ({name}): {untestable_rows[0].comparison.certainty()}."
    n = min(r.comparison.n_pairs for r in primary)
    power = sign_flip_power(n, hypothesis.power_effect, hypothesis.primary.alternative, ALPHA / m,
                            simulations=POWER_SIMULATIONS)
    results = "; ".join(f"{readable(r.metric)}: Δ {r.comparison.delta:+.3f}, corrected {_p(r.comparison)}, "
                        f"{r.comparison.effect_text()}" for r in primary)
    detectable = detectable_effect(n, hypothesis.primary.alternative, ALPHA / m)
    eighty = f"; 80% power needs |d_z| >= {detectable:g}" if detectable is not None else ""
    return (f"Pre-registered test ({name}): no interaction detected ({results}; n = {n}, Holm over m = {m}); "
            f"with n = {n} this test has {power:.0%} power for an interaction of d_z = {hypothesis.power_effect:g}"
            f"{eighty} (exact {sidedness(hypothesis.primary.alternative)} sign-flip at α/m = {ALPHA / m:.3g}, "
            f"Holm's first step; {POWER_SIMULATIONS} simulated normal samples, fixed seed).")


def _p(comparison: Comparison) -> str:
    return f"p = {comparison.corrected_p:.3g}" if comparison.corrected_p >= 0.001 else "p < 0.001"


def analyse_hypothesis(trials: pd.DataFrame, study: StudySpec, hypothesis: HypothesisSpec) -> InfoGapAnalysis:
    checks = bed_checks(trials, study, hypothesis)
    untestable = not_testable(checks)
    primary = _family(trials, study, [hypothesis.primary], PRIMARY_FAMILY)
    secondary = _family(trials, study, hypothesis.secondary, SECONDARY_FAMILY)
    verdict = primary_verdict(primary, hypothesis, untestable)
    findings = [_finding(result) for result in primary]
    if secondary:
        if untestable:
            findings.append(f"Secondary comparisons ({len(secondary)} tests): {untestable}.")
        else:
            findings += [_finding(result) for result in secondary]
    return InfoGapAnalysis(verdict, findings, primary + secondary, checks, preregistered=True)


# --------------------------------------------------------------------------- exploratory (no hypothesis)


def exploratory_results(trials: pd.DataFrame) -> list[ContrastResult]:
    """Pressure (align a > 0 vs 0) and recovery (+regularizer at a vs pressure alone) at each gap,
    two-sided, one Holm family each."""
    finished = trials[trials["status"] == "finished"].copy()
    if finished.empty or GAP_KEY not in finished or ALIGN_KEY not in finished:
        return []
    finished["others"] = finished.apply(regularizers_beside_align, axis=1)
    metrics = info_gap_metrics(finished.columns)
    sizes = finished["train.batch_size"].dropna().unique() if "train.batch_size" in finished else []
    batch = f" [batch {int(sizes[0])}]" if len(sizes) == 1 else ""  # a searched batch size is in the labels
    raw: dict[str, list[tuple[str, str, Comparison, dict]]] = {"pressure": [], "recovery": []}
    for gap, at_gap in finished.groupby(GAP_KEY):
        plain = at_gap[at_gap["others"] == NO_OTHER_REGULARIZER]
        unpressured = plain[plain[ALIGN_KEY] == 0]
        for align, pressured in plain[plain[ALIGN_KEY] > 0].groupby(ALIGN_KEY):
            regularized = at_gap[(at_gap[ALIGN_KEY] == align) & (at_gap["others"] != NO_OTHER_REGULARIZER)]
            pairs = [("pressure", f"gap {gap:g}: align {align:g} vs 0{batch}", pressured, unpressured)]
            pairs += [("recovery", f"gap {gap:g}: {others} at align {align:g} vs none{batch}", group, pressured)
                      for others, group in regularized.groupby("others")]
            for kind, name, treated, reference in pairs:
                for metric in metrics:
                    t_values, r_values = per_seed(treated[metric], treated["seed"]), \
                        per_seed(reference[metric], reference["seed"])
                    if t_values.empty or r_values.empty:
                        continue
                    means = {"treated": float(t_values.mean()), "reference": float(r_values.mean())}
                    raw[kind].append((name, metric, compare(t_values, r_values), means))
    results = []
    for kind, rows in raw.items():
        family = f"exploratory {kind}"
        corrected = correct([comparison for _, _, comparison, _ in rows], family)
        results += [ContrastResult(family, name, metric, comparison, means)
                    for (name, metric, _, means), comparison in zip(rows, corrected, strict=True)]
    return results


def analyse_exploratory(trials: pd.DataFrame) -> InfoGapAnalysis:
    results = exploratory_results(trials)
    if not results:
        return InfoGapAnalysis("The study has no pair of configurations that differ only in alignment pressure, "
                               "so the predicted effect cannot be tested.", [])
    probes = [r for r in results if r.metric in MODALITY_SPECIFIC_PROBES]
    significant = [r for r in probes if r.comparison.significant]
    sizes = ", ".join(f"{family} m = {next(r.comparison.family_size for r in results if r.family == family)}"
                      for family in dict.fromkeys(r.family for r in results))
    verdict = (f"No pre-registered hypothesis in the study file: every comparison below is exploratory (two-sided, "
               f"Holm within each family: {sizes}). {len(significant)} of {len(probes)} comparisons on the "
               f"modality-specific probes are significant after correction"
               + (": " + "; ".join(f"{r.name}, {readable(r.metric)} Δ {r.comparison.delta:+.3f} "
                                   f"({r.comparison.certainty()})" for r in significant) if significant else "")
               + ".")
    findings = [_finding(result) for result in probes]
    return InfoGapAnalysis(verdict, findings, results)


def analyse_info_gap(trials: pd.DataFrame, study: StudySpec) -> InfoGapAnalysis:
    if study.hypothesis is not None:
        return analyse_hypothesis(trials, study, study.hypothesis)
    return analyse_exploratory(trials)

