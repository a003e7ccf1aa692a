"""Is a configuration's difference from its baseline real? Paired over seeds where possible.

- At least 2 seeds present in both: paired t-test (scipy.stats.ttest_rel) on the seed-matched
  values; Cohen's d is d_z = mean(difference) / sd(difference).
- Fewer than 2 matched seeds but at least 2 runs on each side: a 95% percentile bootstrap
  interval of the difference of means (unpaired resampling); significant when it excludes 0.
  No p-value is reported then.
- Otherwise no test is possible and nothing is marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean(treated) - mean(reference)
    relative: float  # delta / |mean(reference)|; nan when the reference mean is 0
    test: str  # "paired t-test", "bootstrap CI" or "none"
    n_pairs: int
    p_value: float | None = None
    ci: tuple[float, float] | None = None
    cohens_d: float | None = None

    @property
    def significant(self) -> bool:
        if self.test == "paired t-test":
            return self.p_value is not None and self.p_value < ALPHA
        if self.test == "bootstrap CI" and self.ci is not None:
            return self.ci[0] > 0 or self.ci[1] < 0
        return False

    def certainty(self) -> str:
        """'p = 0.003, n = 3 paired seeds' style, for prose and table footnotes."""
        if self.test == "paired t-test":
            p_text = "p = n/a" if self.p_value is None else format_p(self.p_value)
            return f"paired t-test {p_text}, n = {self.n_pairs} seeds"
        if self.test == "bootstrap CI" and self.ci is not None:
            return f"95% bootstrap CI [{self.ci[0]:+.3g}, {self.ci[1]:+.3g}], unpaired"
        return "too few runs to test"


def format_p(p_value: float) -> str:
    """'p = 0.013' or 'p < 0.001'."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def per_seed(values: pd.Series, seeds: pd.Series) -> pd.Series:
    """Mean value per seed (a seed run twice, e.g. after a resume, counts once)."""
    frame = pd.DataFrame({"seed": seeds.to_numpy(), "value": values.to_numpy()}).dropna()
    return frame.groupby("seed")["value"].mean()


def compare(treated: pd.Series, reference: pd.Series) -> Comparison:
    """Compare two per-seed series (index = seed); see the module docstring for the tests used."""
    treated, reference = treated.dropna(), reference.dropna()
    delta = float(treated.mean() - reference.mean())
    relative = float(delta / abs(reference.mean())) if reference.mean() else math.nan
    common = treated.index.intersection(reference.index)
    if len(common) >= 2:
        differences = treated[common] - reference[common]
        p_value = _paired_p(treated[common].to_numpy(), reference[common].to_numpy())
        spread = differences.std(ddof=1)
        cohens_d = float(differences.mean() / spread) if spread > 0 else None
        return Comparison(delta, relative, "paired t-test", len(common), p_value, None, cohens_d)
    if len(treated) >= 2 and len(reference) >= 2:
        return Comparison(delta, relative, "bootstrap CI", len(common), ci=_bootstrap_ci(treated, reference))
    return Comparison(delta, relative, "none", len(common))


def _paired_p(treated: np.ndarray, reference: np.ndarray) -> float | None:
    differences = treated - reference
    if np.allclose(differences, 0.0, rtol=0.0, atol=1e-12):
        return 1.0  # no difference on any seed; scipy would answer nan (0 / 0)
    if np.allclose(differences, differences[0], rtol=1e-9, atol=1e-12):
        return 0.0  # the same nonzero difference on every seed: t is infinite (scipy warns, then says 0)
    return float(stats.ttest_rel(treated, reference).pvalue)


def _bootstrap_ci(treated: pd.Series, reference: pd.Series) -> tuple[float, float]:
    result = stats.bootstrap(
        (treated.to_numpy(), reference.to_numpy()),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
