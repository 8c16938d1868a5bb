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


# ---- ranks across data sets and multiple testing ---------------------------------------------------------
# A fixed rank matrix: 6 blocks (data sets) x 5 entries, higher is better, with a tie in block 3.
RANK_VALUES = [[0.91, 0.88, 0.85, 0.80, 0.79],
               [0.89, 0.90, 0.84, 0.83, 0.78],
               [0.93, 0.87, 0.87, 0.82, 0.80],
               [0.90, 0.86, 0.88, 0.79, 0.81],
               [0.92, 0.89, 0.83, 0.84, 0.77],
               [0.88, 0.91, 0.86, 0.81, 0.80]]


def test_friedman_and_critical_difference_match_autorank_and_scipy(capsys):
    import pandas as pd
    from autorank import autorank

    values = pd.DataFrame(RANK_VALUES, columns=["a", "b", "c", "d", "e"])
    ours = stats.friedman_nemenyi(values, alpha=0.05)
    ref = autorank(values, alpha=0.05, order="descending", force_mode="nonparametric")
    capsys.readouterr()  # autorank prints its tables
    assert (ref.omnibus, ref.posthoc) == ("friedman", "nemenyi")
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.cd == pytest.approx(ref.cd, rel=1e-4)  # autorank's studentized range is statsmodels' table
    assert dict(ours.mean_ranks) == pytest.approx(dict(ref.rankdf["meanrank"]))
    assert list(ours.mean_ranks.index) == list(ref.rankdf.index)[::-1]  # autorank lists the worst first
    ranks = values.rank(axis=1, ascending=False)
    friedman = st.friedmanchisquare(*[ranks[c] for c in ranks.columns])
    assert (ours.statistic, ours.p_value) == (pytest.approx(friedman.statistic), pytest.approx(friedman.pvalue))
    assert (ours.n_blocks, ours.k) == (6, 5) and ours.significant


def test_critical_difference_follows_demsar_and_the_nemenyi_p_values():
    import pandas as pd

    # Demšar (2006), Table 5(a): q_0.05 = 2.569 for k = 4; his example, N = 14 data sets, has CD = 1.25.
    values = pd.DataFrame(np.random.default_rng(1).normal(size=(14, 4)), columns=list("wxyz"))
    test = stats.friedman_nemenyi(values, alpha=0.05)
    assert test.q_alpha == pytest.approx(2.569, abs=5e-4) and test.cd == pytest.approx(1.25, abs=5e-3)
    # Two entries differ by Nemenyi's test (scikit-posthocs) exactly when their mean ranks are more than CD apart.
    wide = stats.friedman_nemenyi(pd.DataFrame(RANK_VALUES, columns=list("abcde")), alpha=0.05)
    for i in wide.mean_ranks.index:
        for j in wide.mean_ranks.index:
            if i != j:
                apart = abs(wide.mean_ranks[i] - wide.mean_ranks[j]) > wide.cd
                assert (wide.nemenyi.loc[i, j] < 0.05) == apart, (i, j)
    assert (wide.nemenyi.to_numpy() < 0.05).any() and (wide.nemenyi.to_numpy() >= 0.05).any()


def test_rank_test_on_one_block_has_no_statistic_and_refuses_gaps():
    import pandas as pd

    one = stats.friedman_nemenyi(pd.DataFrame([[0.9, 0.8, 0.7]], columns=list("abc")))
    assert math.isnan(one.p_value) and math.isnan(one.statistic) and list(one.mean_ranks.index) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="complete blocks x entries table"):
        stats.friedman_nemenyi(pd.DataFrame([[0.9, float("nan")], [0.8, 0.7]], columns=list("ab")))


def test_p_value_adjustment_is_statsmodels_and_keeps_nan():
    from statsmodels.stats.multitest import multipletests

    p = [0.001, 0.04, float("nan"), 0.03, 0.5]
    finite = [0.001, 0.04, 0.03, 0.5]
    holm = stats.adjust_p_values(p, "holm")
    assert math.isnan(holm[2])
    np.testing.assert_allclose(holm[[0, 1, 3, 4]], multipletests(finite, method="holm")[1])
    # By hand, Holm over 4 tests: 0.001 * 4, then max(0.03 * 3, 0.004), max(0.04 * 2, 0.09), 0.5.
    np.testing.assert_allclose(holm[[0, 3, 1, 4]], [0.004, 0.09, 0.09, 0.5])
    bh = stats.adjust_p_values(p, "bh")
    np.testing.assert_allclose(bh[[0, 1, 3, 4]], multipletests(finite, method="fdr_bh")[1])
    with pytest.raises(ValueError, match="unknown multiple-testing correction 'bonf'; choose one of: holm, bh"):
        stats.adjust_p_values(p, "bonf")
