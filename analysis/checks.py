"""Test-bed checks: did the models learn what the study's question needs, before anything is concluded?

A probe is "above chance" when a one-sided binomial test of its accuracy against chance (1 / number
of classes) gives p < CHECK_P on one evaluation set (successes = mean accuracy over seeds x the
probe's test size, `base.data.eval_size`; seeds share the evaluation set, so they are not pooled).
The shared-class probe must also be "far above chance": at least a third of the way from chance to
perfect, chance + (1 - chance) / 3 (0.417 for 8 classes). A failed check turns the study's verdicts
into "not testable: <check, its value, chance>".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy import stats

from analysis.metrics import readable
from trainers.albef.names import TRAINED_FLAG

CHECK_P = 0.001
FAR_FRACTION = 1 / 3


@dataclass(frozen=True)
class BedCheck:
    metric: str
    where: str  # which trials: "baseline", "no pressure at info gap 1", ...
    value: float  # mean over seeds
    seeds: int
    chance: float
    eval_size: int
    binomial_p: float | None  # None: a check of per-trial flags, no binomial test
    needed: float  # the smallest passing value (the margin; chance for "above chance")
    far: bool  # the margin applies

    @property
    def passed(self) -> bool:
        return (self.binomial_p is None or self.binomial_p < CHECK_P) and self.value >= self.needed

    def describe(self) -> str:
        if self.binomial_p is None:
            return (f"{readable(self.metric)} = {self.value:.3f} ({self.where}: the fraction of {_seeds(self.seeds)} "
                    f"whose ALBEF pre-training brought ITC below chance and ITM above its prior); needs 1")
        rule = f"needs >= {self.needed:.3f} and binomial p < {CHECK_P}" if self.far else \
            f"needs binomial p < {CHECK_P} above chance"
        return (f"{readable(self.metric)} = {self.value:.3f} ({self.where}, mean of {_seeds(self.seeds)}), "
                f"chance {self.chance:.3f}; {rule}")

    def row(self) -> dict[str, object]:
        binomial = ("-" if self.binomial_p is None
                    else f"{self.binomial_p:.2g}" if self.binomial_p > 0 else "< 1e-300")  # below float range
        return {"check": readable(self.metric), "trials": self.where, "value": round(self.value, 3),
                "chance": round(self.chance, 3), "needed": round(self.needed, 3), "binomial p": binomial,
                "seeds": self.seeds, "passed": "yes" if self.passed else "NO"}


def probe_chance(metric: str, dataset: str) -> float | None:
    """1 / classes of a synthetic-world probe `linear_probe/<probe>/<feature>`; None when unknown."""
    parts = metric.split("/")
    if dataset != "synthetic" or len(parts) != 3 or parts[0] != "linear_probe":
        return None
    from trainers.data.synthetic_tasks import PROBES

    classes = {name: num_classes for name, _, _, num_classes in PROBES}
    return 1.0 / classes[parts[1]] if parts[1] in classes else None


def probe_check(trials: pd.DataFrame, metric: str, where: str, dataset: str, eval_size: int,
                far: bool) -> BedCheck | None:
    """Check `metric` over the given (finished) trials; None when it was not measured or has no chance level."""
    chance = probe_chance(metric, dataset)
    if chance is None or metric not in trials or trials[metric].dropna().empty or eval_size < 1:
        return None
    per_seed = trials.groupby("seed")[metric].mean().dropna()
    value = float(per_seed.mean())
    successes = int(round(value * eval_size))
    p_value = float(stats.binomtest(successes, eval_size, chance, alternative="greater").pvalue)
    needed = chance + (1.0 - chance) * FAR_FRACTION if far else chance
    return BedCheck(metric, where, value, len(per_seed), chance, eval_size, p_value, needed, far)


def trained_check(trials: pd.DataFrame, where: str) -> BedCheck | None:
    """Every given ALBEF trial's pre-training linked images and texts (`albef/trained`); None for CLIP."""
    if TRAINED_FLAG not in trials or trials[TRAINED_FLAG].dropna().empty:
        return None
    per_seed = trials.groupby("seed")[TRAINED_FLAG].mean().dropna()
    return BedCheck(TRAINED_FLAG, where, float(per_seed.mean()), len(per_seed), chance=0.0, eval_size=0,
                    binomial_p=None, needed=1.0, far=False)


def checks_frame(checks: list[BedCheck]) -> pd.DataFrame:
    return pd.DataFrame.from_records([check.row() for check in checks]).set_index("check")


def not_testable(checks: list[BedCheck]) -> str | None:
    """'not testable: <failed checks>' or None when every check passed."""
    failed = [check for check in checks if not check.passed]
    if not failed:
        return None
    return "not testable: " + "; ".join(check.describe() for check in failed)


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"
