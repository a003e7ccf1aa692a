"""analysis.stats: exact sign-flip tests against scipy, no p = 0, effect-size intervals that cover, Holm,
and simulated null studies through the report's own code path (compare_family) that keep the
family-wise false-positive rate at or below 5%."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.stats import (
    ALPHA,
    EXACT_MAX_N,
    MONTE_CARLO_FLIPS,
    PAIRED_MONTE_CARLO,
    UNPAIRED,
    compare,
    compare_family,
    correct,
    detectable_effect,
    holm,
    noncentral_t_interval,
    paired_comparison,
    sign_flip_p,
    sign_flip_power,
)

NULL_STUDIES = 2000
FAMILY_METRICS = 6


def _series(values, seeds=None) -> pd.Series:
    values = list(values)
    return pd.Series(values, index=list(seeds) if seeds is not None else range(len(values)), dtype=float)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_sign_flip_p_equals_scipy_exact_permutation_test(n, alternative):
    rng = np.random.default_rng(n)
    for _ in range(5):
        differences = np.round(rng.normal(0.3, 1.0, n) * 4) / 4  # steps, so that ties occur
        reference = stats.permutation_test((differences,), lambda x, axis: x.sum(axis=axis),
                                           permutation_type="samples", alternative=alternative,
                                           n_resamples=10**6).pvalue
        assert sign_flip_p(differences, alternative)[0] == pytest.approx(reference)


def test_identical_differences_give_the_smallest_exact_p_not_zero():
    # the old t-test path answered p = 0 for this (t is infinite)
    result = paired_comparison(np.full(3, 1 / 512))
    assert result.p_value == pytest.approx(2 / 2**3) and result.smallest_p == pytest.approx(0.25)
    assert result.effect is None  # no spread: d_z undefined, not infinite
    one_sided = paired_comparison(np.full(6, 1 / 512), "greater")
    assert one_sided.p_value == pytest.approx(1 / 64)
    assert paired_comparison(np.zeros(4)).p_value == pytest.approx(1.0)


def test_beyond_exact_limit_monte_carlo_with_a_fixed_generator():
    n = EXACT_MAX_N + 2
    differences = np.linspace(0.5, 1.5, n)  # all positive: exact p would be 1/2^18
    result = paired_comparison(differences, "greater")
    assert result.test == PAIRED_MONTE_CARLO
    assert result.p_value == pytest.approx(1 / (MONTE_CARLO_FLIPS + 1))
    assert paired_comparison(differences, "greater").p_value == result.p_value  # reproducible
    mixed = np.random.default_rng(3).normal(0.2, 1.0, n)
    exact_reference = stats.permutation_test((mixed,), lambda x, axis: x.sum(axis=axis), permutation_type="samples",
                                             alternative="greater", n_resamples=2**n).pvalue
    assert paired_comparison(mixed, "greater").p_value == pytest.approx(exact_reference, abs=0.005)


def test_too_few_paired_seeds_is_not_testable_and_unpaired_runs_use_a_permutation_test():
    few = compare(_series([0.5, 0.6], [0, 1]), _series([0.1, 0.2], [0, 1]))
    [few] = correct([few], "family")
    assert few.smallest_p == pytest.approx(0.5) and not few.testable and not few.significant
    assert few.certainty().startswith("not testable at n = 2 (smallest attainable p = 0.5;")
    # no seed in common, 3 runs a side: 20 splits, two-sided smallest p = 2/20; never a bootstrap verdict
    unpaired = compare(_series([0.9, 0.91, 0.92], [0, 1, 2]), _series([0.1, 0.11, 0.12], [5, 6, 7]))
    assert unpaired.test == UNPAIRED and unpaired.p_value == pytest.approx(0.1)
    assert not correct([unpaired], "f")[0].significant
    single = correct([compare(_series([1.0], [0]), _series([0.5], [0]))], "f")[0]
    assert single.p_value is None and single.certainty().startswith("not testable: 1 vs 1 runs")


def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04, cumulative max
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])  # monotone: never below an earlier step


def test_correct_fills_the_family_size_and_verdicts_use_the_corrected_p():
    strong = paired_comparison(np.linspace(0.05, 0.12, 8))  # all 8 positive: p = 2/256 = 0.0078
    weak = paired_comparison(np.array([0.1, -0.02, 0.05, 0.07, -0.01, 0.04, 0.06, 0.03]))
    alone = correct([strong], "one")[0]
    assert alone.significant and alone.corrected_p == pytest.approx(2 / 256)
    assert "Holm-corrected p = 0.008 (m = 1), n = 8 paired seeds, d_z = +" in alone.certainty()
    # in a family of 8 the same uncorrected p = 0.0078 cannot pass: 8 x 2/256 = 0.0625
    crowd = correct([strong] + [weak] * 7, "crowd")
    assert crowd[0].family_size == 8 and not crowd[0].significant and not crowd[0].testable
    assert "not testable at n = 8" in crowd[0].certainty() and "Holm over m = 8 needs p < 0.00625" in \
        crowd[0].certainty()


def test_d_z_interval_is_the_noncentral_t_interval_and_covers():
    # a textbook value: t = 1.581 with df = 9 -> ncp in [-0.54, 3.63]; d_z = ncp / sqrt(10)
    low, high = noncentral_t_interval(0.5 * math.sqrt(10), 9, 1 / math.sqrt(10))
    assert (low, high) == (pytest.approx(-0.172, abs=2e-3), pytest.approx(1.148, abs=2e-3))
    rng = np.random.default_rng(7)
    true_dz, n, covered, draws = 0.8, 5, 0, 400
    for _ in range(draws):
        interval = paired_comparison(rng.normal(true_dz, 1.0, n)).effect_ci
        covered += interval[0] <= true_dz <= interval[1]
    assert abs(covered / draws - 0.95) < 0.035


def _null_study(rng: np.random.Generator, n: int, effect: float = 0.0) -> list[tuple[pd.Series, pd.Series]]:
    """One configuration vs its baseline on FAMILY_METRICS accuracies over n seeds, in steps of 1/512
    (ties happen); seeds share an offset (initialization luck) that pairing removes. `effect` shifts
    the first metric by that many SDs of the paired difference."""
    seed_luck = rng.normal(0.0, 0.05, size=(n, 1))
    base = 0.5 + seed_luck + rng.normal(0.0, 0.02, size=(n, FAMILY_METRICS))
    treated = 0.5 + seed_luck + rng.normal(0.0, 0.02, size=(n, FAMILY_METRICS))
    treated[:, 0] += effect * 0.02 * math.sqrt(2)
    base, treated = np.round(base * 512) / 512, np.round(treated * 512) / 512
    seeds = range(100, 100 + n)
    return [(_series(treated[:, j], seeds), _series(base[:, j], seeds)) for j in range(FAMILY_METRICS)]


@pytest.mark.parametrize("n", [3, 5, 8])
def test_family_wise_false_positive_rate_under_the_null_is_at_most_5_percent(n):
    rng = np.random.default_rng(1000 + n)
    any_corrected = any_uncorrected = 0
    for _ in range(NULL_STUDIES):
        family = compare_family(_null_study(rng, n), "null")
        any_corrected += any(c.significant for c in family)
        any_uncorrected += any(c.p_value < ALPHA for c in family)
    rate = any_corrected / NULL_STUDIES
    assert rate <= ALPHA
    if n == 8:
        # the simulation can see a miscalibrated procedure: uncorrected p-values would over-claim
        assert any_uncorrected / NULL_STUDIES > 2 * ALPHA


def test_a_large_true_effect_is_detected_at_n_8():
    rng = np.random.default_rng(42)
    detected = wrong = 0
    studies = 500
    for _ in range(studies):
        family = compare_family(_null_study(rng, 8, effect=2.5), "power")
        detected += family[0].significant and family[0].delta > 0
        wrong += any(c.significant for c in family[1:])
    assert detected / studies >= 0.8
    assert wrong / studies <= ALPHA


def test_power_by_simulation_grows_with_n_and_effect():
    assert sign_flip_power(8, 1.5, "less", ALPHA / 2) > sign_flip_power(8, 1.0, "less", ALPHA / 2) > 0.5
    assert sign_flip_power(5, 3.0, "less", ALPHA / 2) == 0.0  # smallest p = 1/32 > 0.025: never passes


def test_detectable_effect_is_where_power_crosses_80_percent():
    effect = detectable_effect(8, "less", ALPHA / 2)
    assert sign_flip_power(8, effect, "less", ALPHA / 2) >= 0.8 > sign_flip_power(8, effect - 0.05, "less", ALPHA / 2)
    assert detectable_effect(5, "less", ALPHA / 2) is None  # 1/32 > 0.025: no effect size is enough
