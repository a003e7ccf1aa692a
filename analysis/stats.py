"""Is a difference between configurations real? Exact tests, effect sizes with intervals, Holm within a family.

Tests (every p-value is at least the smallest one the design can give; there is no p = 0):
- Seeds that pair up (at least 2 seeds present on both sides): a paired sign-flip permutation test on
  the seed-matched differences, statistic = their sum. Exact over all 2^n sign patterns up to
  n = EXACT_MAX_N; beyond that Monte Carlo over MONTE_CARLO_FLIPS random patterns from
  numpy.random.default_rng(MONTE_CARLO_SEED), p = (1 + hits) / (1 + draws). The identity pattern
  counts, so an exact one-sided p is >= 1/2^n and a two-sided p >= 2/2^n.
- Seeds that do not pair: an unpaired permutation test of the difference of means (scipy's
  permutation_test, exact when the number of splits is small). With 2-3 runs a side its smallest p
  cannot pass any threshold, so such a comparison reads "not testable", never a bootstrap verdict.
- Effect sizes: d_z = mean / SD of the paired differences (paired), or d_s = difference of means /
  pooled SD (unpaired), each with a 95% confidence interval from the noncentral t distribution
  (exact for normal differences; at n = 5 it spans about +-1).
- Multiple comparisons: Holm's step-down correction within one family (one table or one report
  section); `correct` fills in each comparison's corrected p and the family size m. A comparison
  whose smallest attainable p times m is not below ALPHA cannot pass Holm's first step and reads
  "not testable at n = k (smallest attainable p = ...)". Only a corrected p below ALPHA is significant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

ALPHA = 0.05
EXACT_MAX_N = 16  # 2^16 = 65,536 sign patterns: exact below, Monte Carlo above
MONTE_CARLO_FLIPS = 100_000
MONTE_CARLO_SEED = 0
UNPAIRED_RESAMPLES = 100_000  # scipy enumerates every split when there are fewer
CONFIDENCE = 0.95
SPREAD_FLOOR = 1e-9

Alternative = Literal["two-sided", "greater", "less"]
PAIRED_EXACT = "paired sign-flip (exact)"
PAIRED_MONTE_CARLO = f"paired sign-flip (Monte Carlo, {MONTE_CARLO_FLIPS} flips)"
UNPAIRED = "unpaired permutation"
NOT_TESTED = "none"


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean(treated) - mean(reference) (paired: the mean paired difference)
    relative: float  # delta / |mean(reference)|; nan when the reference mean is 0 or unknown
    test: str  # PAIRED_EXACT, PAIRED_MONTE_CARLO, UNPAIRED or NOT_TESTED
    n_pairs: int  # paired seeds (unpaired: the smaller side's number of runs)
    alternative: Alternative = "two-sided"
    p_value: float | None = None  # uncorrected; never shown as a verdict on its own
    smallest_p: float | None = None  # the smallest p this test can give at this n
    effect: float | None = None  # d_z (paired) or d_s (unpaired); None when the SD is 0
    # (t statistic, degrees of freedom, effect per unit of t): the interval is computed when first read
    effect_t: tuple[float, int, float] | None = None
    corrected_p: float | None = None  # Holm within `family`, filled in by `correct`
    family: str | None = None
    family_size: int | None = None
    reason: str | None = None  # why there is no test

    @cached_property
    def effect_ci(self) -> tuple[float, float] | None:
        """95% noncentral-t interval of the effect (None without spread)."""
        return None if self.effect_t is None else noncentral_t_interval(*self.effect_t)

    @property
    def effect_name(self) -> str:
        return "d_s" if self.test == UNPAIRED else "d_z"

    @property
    def significant(self) -> bool:
        return self.corrected_p is not None and self.corrected_p < ALPHA

    @property
    def testable(self) -> bool:
        """Could this comparison pass Holm's first step in its family at all?"""
        if self.p_value is None or self.smallest_p is None:
            return False
        return self.smallest_p * (self.family_size or 1) < ALPHA

    def effect_text(self) -> str:
        if self.effect is None:
            return f"{self.effect_name} n/a (no spread)"
        text = f"{self.effect_name} = {self.effect:+.2f}"
        if self.effect_ci is not None:
            text += f" [{self.effect_ci[0]:+.2f}, {self.effect_ci[1]:+.2f}]"
        return text

    def n_text(self) -> str:
        return f"n = {self.n_pairs} paired seeds" if self.test != UNPAIRED else f"n = {self.n_pairs} runs a side"

    def certainty(self) -> str:
        """The corrected p with its family and n, or why there is no verdict, for prose and footnotes."""
        if self.p_value is None:
            return f"not testable: {self.reason or 'too few runs'}"
        m = self.family_size or 1
        if not self.testable:
            return (f"not testable at n = {self.n_pairs} (smallest attainable p = {self.smallest_p:.3g}; "
                    f"Holm over m = {m} needs p < {ALPHA / m:.3g})")
        if self.corrected_p is None:
            raise ValueError("a tested comparison needs its family's correction (analysis.stats.correct) first")
        return (f"Holm-corrected {format_p(self.corrected_p)} (m = {m}), {self.n_text()}, "
                f"{self.effect_text()}, {sidedness(self.alternative)}")

    def status(self) -> str:
        if self.significant:
            return "significant"
        return "not significant" if self.testable else "not testable"


def sidedness(alternative: Alternative) -> str:
    return "two-sided" if alternative == "two-sided" else f"one-sided ({alternative})"


def format_p(p_value: float) -> str:
    """'p = 0.013' or 'p < 0.001'."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def per_seed(values: pd.Series, seeds: pd.Series) -> pd.Series:
    """Mean value per seed (a seed run twice, e.g. after a resume, counts once)."""
    frame = pd.DataFrame({"seed": seeds.to_numpy(), "value": values.to_numpy()}).dropna()
    return frame.groupby("seed")["value"].mean()


# --------------------------------------------------------------------------- the tests


@lru_cache(maxsize=EXACT_MAX_N + 1)
def _all_sign_patterns(n: int) -> np.ndarray:
    """(2^n, n) matrix of +-1; row 0 is the identity (no flip)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    return 1.0 - 2.0 * bits


def _sign_patterns(n: int) -> np.ndarray:
    if n <= EXACT_MAX_N:
        return _all_sign_patterns(n)
    rng = np.random.default_rng(MONTE_CARLO_SEED)
    random = rng.choice([-1.0, 1.0], size=(MONTE_CARLO_FLIPS, n))
    return np.vstack([np.ones((1, n)), random])  # the observed pattern counts once


def sign_flip_p(differences: np.ndarray, alternative: Alternative = "two-sided") -> np.ndarray:
    """p-values of the sign-flip test for one sample (shape (n,)) or many at once (shape (k, n))."""
    differences = np.atleast_2d(np.asarray(differences, dtype=float))
    n = differences.shape[1]
    sums = differences @ _sign_patterns(n).T  # (k, patterns); column 0 is the observed sum
    observed = sums[:, :1]
    tolerance = 1e-9 * np.maximum(1.0, np.abs(differences).sum(axis=1, keepdims=True))
    if alternative == "greater":
        hits = sums >= observed - tolerance
    elif alternative == "less":
        hits = sums <= observed + tolerance
    else:
        hits = np.abs(sums) >= np.abs(observed) - tolerance
    if n <= EXACT_MAX_N:
        return hits.mean(axis=1)
    return hits.sum(axis=1) / sums.shape[1]  # (1 + hits among draws) / (1 + draws): row 0 always hits


def smallest_sign_flip_p(n: int, alternative: Alternative) -> float:
    if n > EXACT_MAX_N:
        return 1.0 / (MONTE_CARLO_FLIPS + 1)
    return min(1.0, (1.0 if alternative != "two-sided" else 2.0) / 2**n)


def _smallest_unpaired_p(n_treated: int, n_reference: int, alternative: Alternative) -> float:
    splits = special.comb(n_treated + n_reference, n_treated, exact=True)
    if splits > UNPAIRED_RESAMPLES:
        return 1.0 / (UNPAIRED_RESAMPLES + 1)
    return min(1.0, (1.0 if alternative != "two-sided" else 2.0) / splits)


def noncentral_t_interval(t_value: float, df: int, scale: float,
                          confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval for a standardized effect whose t statistic is t_value = effect / scale: the
    noncentrality parameters that put t_value at the upper and lower tail quantile, times `scale`."""
    tail = (1.0 - confidence) / 2

    def solve(target: float) -> float:
        # cdf(t_value; ncp) falls as ncp grows: widen the bracket around t_value until it holds the root
        def gap(ncp: float) -> float:
            return float(stats.nct.cdf(t_value, df, ncp)) - target

        width = 2.0 + abs(t_value)
        low, high = t_value - width, t_value + width
        while gap(low) < 0 and width < 1e3:
            width *= 2
            low = t_value - width
        while gap(high) > 0 and width < 1e3:
            width *= 2
            high = t_value + width
        if not gap(low) >= 0 >= gap(high):
            return math.nan
        return optimize.brentq(gap, low, high, xtol=1e-10)

    return solve(1.0 - tail) * scale, solve(tail) * scale


def paired_comparison(differences: pd.Series | np.ndarray, alternative: Alternative = "two-sided",
                      reference_mean: float = math.nan) -> Comparison:
    """Test seed-matched differences (treated - reference, or an interaction contrast per seed)."""
    values = np.asarray(differences, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    delta = float(values.mean()) if n else math.nan
    relative = delta / abs(reference_mean) if reference_mean and math.isfinite(reference_mean) else math.nan
    if n < 2:
        return Comparison(delta, relative, NOT_TESTED, n, alternative,
                          reason=f"{n} paired seed{'s' if n != 1 else ''} (a paired test needs 2)")
    p_value = float(sign_flip_p(values, alternative)[0])
    spread = float(values.std(ddof=1))
    effect = t_form = None
    if spread > SPREAD_FLOOR * max(1.0, abs(delta)):  # below it the spread is float round-off of equal differences
        effect = delta / spread
        t_form = (effect * math.sqrt(n), n - 1, 1.0 / math.sqrt(n))
    test = PAIRED_EXACT if n <= EXACT_MAX_N else PAIRED_MONTE_CARLO
    return Comparison(delta, relative, test, n, alternative, p_value, smallest_sign_flip_p(n, alternative),
                      effect, t_form)


def _unpaired_comparison(treated: np.ndarray, reference: np.ndarray, alternative: Alternative) -> Comparison:
    delta = float(treated.mean() - reference.mean())
    relative = delta / abs(reference.mean()) if reference.mean() else math.nan
    result = stats.permutation_test(
        (treated, reference), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        permutation_type="independent", alternative=alternative, n_resamples=UNPAIRED_RESAMPLES,
        vectorized=True, rng=np.random.default_rng(MONTE_CARLO_SEED))
    n1, n2 = len(treated), len(reference)
    pooled = math.sqrt(((n1 - 1) * treated.var(ddof=1) + (n2 - 1) * reference.var(ddof=1)) / (n1 + n2 - 2))
    effect = t_form = None
    if pooled > SPREAD_FLOOR * max(1.0, abs(delta)):
        effect = delta / pooled
        scale = math.sqrt(1.0 / n1 + 1.0 / n2)
        t_form = (effect / scale, n1 + n2 - 2, scale)
    return Comparison(delta, relative, UNPAIRED, min(n1, n2), alternative, float(result.pvalue),
                      _smallest_unpaired_p(n1, n2, alternative), effect, t_form)


def compare(treated: pd.Series, reference: pd.Series, alternative: Alternative = "two-sided") -> Comparison:
    """Compare two per-seed series (index = seed): paired when at least 2 seeds match, else unpaired.
    The result is uncorrected: pass it through `correct` with the rest of its family."""
    treated, reference = treated.dropna(), reference.dropna()
    common = treated.index.intersection(reference.index)
    if len(common) >= 2:
        differences = (treated[common] - reference[common]).to_numpy()
        return paired_comparison(differences, alternative, float(reference[common].mean()))
    delta = float(treated.mean() - reference.mean())
    relative = float(delta / abs(reference.mean())) if reference.mean() else math.nan
    if len(treated) >= 2 and len(reference) >= 2:
        return _unpaired_comparison(treated.to_numpy(float), reference.to_numpy(float), alternative)
    return Comparison(delta, relative, NOT_TESTED, len(common), alternative,
                      reason=f"{len(treated)} vs {len(reference)} runs and {len(common)} paired seeds")


# --------------------------------------------------------------------------- families


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate <= alpha under any dependence)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def correct(comparisons: Sequence[Comparison | None], family: str) -> list[Comparison | None]:
    """Holm over the comparisons that have a p-value (None entries and untested ones pass through);
    each gets its corrected p, the family's name and its size m."""
    tested = [i for i, c in enumerate(comparisons) if c is not None and c.p_value is not None]
    adjusted = holm([comparisons[i].p_value for i in tested])
    result = list(comparisons)
    for i, p in zip(tested, adjusted, strict=True):
        result[i] = dataclasses.replace(comparisons[i], corrected_p=float(p), family=family,
                                        family_size=len(tested))
    for i, comparison in enumerate(comparisons):
        if comparison is not None and comparison.p_value is None:
            result[i] = dataclasses.replace(comparison, family=family, family_size=len(tested))
    return result


def compare_family(pairs: Sequence[tuple[pd.Series, pd.Series]], family: str,
                   alternative: Alternative = "two-sided") -> list[Comparison]:
    """`compare` each (treated, reference) pair, then Holm over them: the path every report table takes."""
    return correct([compare(treated, reference, alternative) for treated, reference in pairs], family)


# --------------------------------------------------------------------------- power


def sign_flip_power(n: int, effect: float, alternative: Alternative = "less", level: float = ALPHA,
                    simulations: int = 4000, seed: int = 0) -> float:
    """Power of the exact sign-flip test at `level` for normal paired differences with |d_z| = `effect`
    in the alternative's direction (two-sided: positive), by simulation with a fixed generator."""
    rng = np.random.default_rng(seed)
    loc = -abs(effect) if alternative == "less" else abs(effect)
    samples = rng.normal(loc=loc, scale=1.0, size=(simulations, n))
    return float((sign_flip_p(samples, alternative) < level).mean())


def detectable_effect(n: int, alternative: Alternative = "less", level: float = ALPHA, power: float = 0.8,
                      step: float = 0.05, largest: float = 5.0) -> float | None:
    """The smallest |d_z| (on a grid of `step`) that the exact sign-flip test detects with `power`;
    None when even `largest` is not enough (the smallest attainable p does not pass `level`)."""
    for effect in np.arange(step, largest + step / 2, step):
        if sign_flip_power(n, float(effect), alternative, level) >= power:
            return round(float(effect), 10)
    return None
