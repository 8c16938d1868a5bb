"""noharm.analysis.stats against scipy on known numbers, and its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from noharm.analysis import stats


def test_t_interval_matches_scipy_and_a_hand_computed_value():
    x = [0.81, 0.83, 0.86]
    ci = stats.t_interval(x, 0.95)
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert (ci.mean, ci.n) == (pytest.approx(0.8333333333333334), 3)
    assert (ci.low, ci.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    # By hand: sd = 0.025166, t_{0.975, 2} = 4.302653 -> half-width 0.062516.
    assert ci.half_width == pytest.approx(4.302652729911275 * 0.025166114784235826 / math.sqrt(3), abs=1e-9)
    assert stats.t_interval(x, 0.90).half_width < ci.half_width


def test_t_interval_small_samples_and_nan():
    one = stats.t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and one.n == 1
    assert math.isnan(stats.t_interval([]).mean)
    assert stats.t_interval([0.5, float("nan"), 0.7]).n == 2
    with pytest.raises(ValueError, match="confidence level must be in \\(0, 1\\), got 95"):
        stats.t_interval([1, 2], 95)


@pytest.mark.parametrize("alternative", ["less", "greater", "two-sided"])
def test_paired_t_test_matches_scipy(alternative):
    rng = np.random.default_rng(3)
    for n in (3, 5, 12):
        a, b = rng.normal(0.8, 0.02, n), rng.normal(0.81, 0.02, n)
        expected = st.ttest_rel(a, b, alternative=alternative).pvalue
        assert stats.paired_t_test(a, b, alternative) == pytest.approx(expected, rel=1e-10)


def test_paired_t_test_known_numbers_and_degenerate_cases():
    a, b = [0.80, 0.82, 0.79], [0.82, 0.83, 0.82]  # differences -0.02, -0.01, -0.03
    assert stats.paired_t_test(a, b) == pytest.approx(st.ttest_rel(a, b, alternative="less").pvalue)
    # By hand: t = -0.02 / (0.01 / sqrt 3) = -sqrt 12; with 2 df, P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert stats.paired_t_test(a, b) == pytest.approx(0.5 - math.sqrt(12) / (2 * math.sqrt(14)), abs=1e-9)
    # Constant differences: infinite t (scipy agrees), and all-zero differences are no evidence at all.
    assert stats.paired_t_test([1, 2, 3], [1.1, 2.1, 3.1]) == 0.0
    assert stats.paired_t_test([1, 2, 3], [1.1, 2.1, 3.1], "greater") == 1.0
    assert stats.paired_t_test([1, 2, 3], [1, 2, 3]) == 1.0
    # NaN pairs are dropped; fewer than two pairs give NaN.
    assert stats.paired_t_test([0.8, float("nan"), 0.7, 0.75], [0.82, 0.9, 0.74, 0.76]) == \
        pytest.approx(st.ttest_rel([0.8, 0.7, 0.75], [0.82, 0.74, 0.76], alternative="less").pvalue)
    assert math.isnan(stats.paired_t_test([0.8], [0.9]))
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_t_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="alternative must be one of"):
        stats.paired_t_test([1, 2], [1, 2], "lower")


@pytest.mark.parametrize("alternative", ["less", "greater", "two-sided"])
def test_sign_flip_test_matches_scipy_exact_permutation_test(alternative):
    rng = np.random.default_rng(7)
    for n in (3, 6, 9):
        a, b = rng.normal(0.8, 0.02, n), rng.normal(0.805, 0.02, n)
        ref = st.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                  alternative=alternative, n_resamples=np.inf).pvalue
        assert stats.sign_flip_test(a, b, alternative) == pytest.approx(ref, abs=1e-12)


def test_sign_flip_test_floor_with_three_seeds():
    # All three differences negative: only the identity pattern is as extreme, p = 1/8.
    assert stats.sign_flip_test([0.7, 0.71, 0.72], [0.8, 0.82, 0.81]) == pytest.approx(1 / 8)
    assert stats.harm_p_value([0.7, 0.71, 0.72], [0.8, 0.82, 0.81], "sign-flip") == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="unknown harm test 'z'"):
        stats.harm_p_value([1, 2], [1, 2], "z")


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).normal(0.8, 0.05, 40)
    ours = stats.bootstrap_interval(x, n_resamples=20_000, seed=1)
    ref = st.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000, rng=np.random.default_rng(2))
    assert ours.mean == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=2e-3)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=2e-3)
    # Seeded: the same call gives the same numbers; a statistic over axis 1 is supported.
    assert stats.bootstrap_interval(x, seed=5) == stats.bootstrap_interval(x, seed=5)
    med = stats.bootstrap_interval(x, statistic=lambda r: np.median(r, axis=1), seed=5)
    assert med.mean == pytest.approx(np.median(x)) and med.low <= med.mean <= med.high
    assert math.isnan(stats.bootstrap_interval([1.0]).low)


def test_fast_t_distribution_calls_give_scipys_bits():
    # The report calls these thousands of times; they must stay bit-identical to scipy.stats.t (the tables'
    # bytes depend on it).
    for df in (1, 2, 3, 4, 9, 29, 99):
        for t in (-40.0, -3.2, -1.0, -1e-9, 0.0, 0.37, 2.5, 1e6, math.inf, -math.inf):
            assert stats._t_cdf(t, df) == float(st.t.cdf(t, df)), (t, df)
        for q in (0.9, 0.95, 0.975, 0.995):
            assert stats._t_quantile(q, df) == float(st.t.ppf(q, df)), (q, df)
    assert math.isnan(stats._t_cdf(math.nan, 3)) and math.isnan(float(st.t.cdf(math.nan, 3)))
