"""Statistics over seeds: t-intervals, paired tests against ERM, and a percentile bootstrap.

Every function takes plain sequences (one value per seed), drops NaN (a metric
undefined on a seed, e.g. AUC of a one-class group) pairwise, and returns NaN
when too few values remain to say anything, never raising on small samples.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import special as _sc
from scipy import stats as _st

if TYPE_CHECKING:
    import pandas as pd

ALTERNATIVES = ("less", "greater", "two-sided")
HARM_TESTS = ("t", "sign-flip")
# Exact sign-flip enumeration up to 2**20 patterns; beyond, a seeded Monte Carlo sample.
MAX_EXACT_SIGN_FLIP = 20


@dataclass(frozen=True)
class Interval:
    """Mean of n values with a two-sided interval [low, high] (half_width = (high - low) / 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _clean(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[~np.isnan(a)]


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    # A report asks for the same few quantiles thousands of times; scipy's generic ppf costs ~50 us a call.
    return float(_st.t.ppf(q, df))


def _t_cdf(t: float, df: int) -> float:
    # scipy.stats.t.cdf(t, df) is scipy.special.stdtr(df, t) behind argument checks that cost ~40 us a call;
    # the same function, so the same bits (tests/test_analysis_stats.py compares them).
    return float(_sc.stdtr(df, t))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean: mean ± t_{(1+level)/2, n-1} · sd / sqrt(n).

    One value gives its mean with NaN bounds; none gives all NaN.
    """
    _check_level(level)
    a = _clean(values)
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(a.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(_t_quantile((1 + level) / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(x)} and {len(y)}")
    d = x - y
    return d[~np.isnan(d)]


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")


def _constant(d: np.ndarray) -> bool:
    # Differences equal up to float noise (e.g. 0.1 - 0.2 on every seed): the sd is rounding only.
    return float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max()))


def paired_t_test(a: Sequence[float], b: Sequence[float], alternative: str = "less") -> float:
    """p-value of the paired t-test of mean(a - b) against 0 ("less": a is below b).

    Pairs with a NaN are dropped; fewer than 2 pairs give NaN. Differences that are
    all equal give p = 0 when they point the way of `alternative` (the t statistic is
    infinite) and p = 1 when they are all zero or point the other way.
    """
    _check_alternative(alternative)
    d = _paired(a, b)
    n = len(d)
    if n < 2:
        return math.nan
    mean = float(d.mean())
    if _constant(d):
        if mean == 0 or abs(mean) <= 1e-15:
            return 1.0
        toward = {"less": mean < 0, "greater": mean > 0, "two-sided": True}[alternative]
        return 0.0 if toward else 1.0
    t = mean / (d.std(ddof=1) / math.sqrt(n))
    if alternative == "less":
        return _t_cdf(t, n - 1)
    if alternative == "greater":
        return float(_st.t.sf(t, n - 1))
    return float(min(1.0, 2 * _st.t.sf(abs(t), n - 1)))


def sign_flip_test(a: Sequence[float], b: Sequence[float], alternative: str = "less",
                   n_resamples: int = 100_000, seed: int = 0) -> float:
    """p-value of the paired sign-flip permutation test on the mean difference a - b.

    Under the null the sign of each difference is a fair coin. Up to
    MAX_EXACT_SIGN_FLIP pairs every one of the 2^n sign patterns is enumerated (an
    exact test: with n pairs the smallest one-sided p-value is 2^-n, so 3 seeds can
    never reach 0.05); beyond, `n_resamples` seeded patterns plus the observed one.
    """
    _check_alternative(alternative)
    d = _paired(a, b)
    n = len(d)
    if n < 1:
        return math.nan
    if n <= MAX_EXACT_SIGN_FLIP:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.default_rng(seed)
        signs = np.vstack([np.ones(n), rng.choice((1.0, -1.0), size=(n_resamples, n))])
    means = signs @ d / n
    observed = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # ties count as "as extreme"
    if alternative == "less":
        hits = means <= observed + tol
    elif alternative == "greater":
        hits = means >= observed - tol
    else:
        hits = np.abs(means) >= abs(observed) - tol
    return float(hits.mean())


def harm_p_value(method: Sequence[float], erm: Sequence[float], test: str = "t") -> float:
    """One-sided p-value that the method's per-seed values are below ERM's (paired by seed)."""
    if test == "t":
        return paired_t_test(method, erm, "less")
    if test == "sign-flip":
        return sign_flip_test(method, erm, "less")
    raise ValueError(f"unknown harm test {test!r}; choose one of: {', '.join(HARM_TESTS)}")


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                       level: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of `statistic` (default: the mean), seeded, vectorised.

    `statistic` maps an array [B, n] of resamples to [B] values along axis 1 (e.g.
    `lambda x: np.median(x, axis=1)`). The returned `mean` is the statistic of the
    data itself. Fewer than 2 values give NaN bounds.
    """
    _check_level(level)
    a = _clean(values)
    stat = statistic or (lambda x: x.mean(axis=1))
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(stat(a[None, :])[0])
    if n == 1:
        return Interval(point, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    boots = stat(a[rng.integers(0, n, size=(n_resamples, n))])
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(low), float(high), n)


# ---- multiple testing --------------------------------------------------------------------------------
# name -> (statsmodels `multipletests` method, what it controls, as captions say it)
CORRECTIONS = {"holm": ("holm", "Holm", "family-wise error rate"),
               "bh": ("fdr_bh", "Benjamini-Hochberg", "false discovery rate")}


def check_correction(name: str) -> None:
    if name not in CORRECTIONS:
        raise ValueError(f"unknown multiple-testing correction {name!r}; choose one of: {', '.join(CORRECTIONS)}")


def adjust_p_values(p_values: Sequence[float], correction: str = "holm") -> np.ndarray:
    """p-values adjusted for the family of all finite ones (statsmodels `multipletests`); NaN stays NaN.

    A test is rejected at level alpha after correction when its adjusted p-value is below alpha (Holm: the
    family-wise error rate is at most alpha; Benjamini-Hochberg: the false discovery rate is).
    """
    from statsmodels.stats.multitest import multipletests

    check_correction(correction)
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, math.nan)
    finite = ~np.isnan(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method=CORRECTIONS[correction][0])[1]
    return out


# ---- ranks across data sets (Demšar 2006) ---------------------------------------------------------------
@dataclass(frozen=True)
class RankTest:
    """Average ranks of k entries over N blocks, the Friedman test and Nemenyi's post-hoc comparisons.

    `ranks`: blocks x entries (1 = best, ties share the average rank); `mean_ranks` sorted best first;
    `nemenyi`: the pairwise p-values (scikit-posthocs); `cd`: Nemenyi's critical difference of mean ranks at
    `alpha` (two entries differ significantly when their mean ranks differ by more). Statistics that need
    more than one block or three entries are NaN.
    """

    ranks: pd.DataFrame
    mean_ranks: pd.Series
    n_blocks: int
    k: int
    statistic: float
    p_value: float
    alpha: float
    q_alpha: float
    cd: float
    nemenyi: pd.DataFrame

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < self.alpha


def friedman_nemenyi(values: pd.DataFrame, alpha: float = 0.05) -> RankTest:
    """Rank `values` (blocks x entries, higher is better, no NaN) within each block and test them: Friedman's
    chi-square (scipy), Nemenyi's pairwise p-values (scikit-posthocs), and the critical difference
    q_alpha / sqrt(2) * sqrt(k (k + 1) / (6 N)) with q_alpha the studentized range quantile (scipy), as in
    Demšar (2006)."""
    import pandas as pd
    import scikit_posthocs as sp

    _check_level(alpha)
    if values.isna().any().any():
        raise ValueError("friedman_nemenyi needs a complete blocks x entries table (no NaN)")
    n, k = values.shape
    ranks = values.rank(axis=1, ascending=False, method="average")
    mean_ranks = ranks.mean(axis=0).sort_values(kind="mergesort")
    statistic = p = q = cd = math.nan
    nemenyi = pd.DataFrame(math.nan, index=values.columns, columns=values.columns)
    if k >= 2:
        q = float(_st.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))
        cd = q * math.sqrt(k * (k + 1) / (6.0 * n))
    if k >= 3 and n >= 2:
        res = _st.friedmanchisquare(*[ranks[c].to_numpy() for c in ranks.columns])
        statistic, p = float(res.statistic), float(res.pvalue)
    if k >= 2 and n >= 2:
        # scikit-posthocs ranks each block ascending: hand it the ranks (1 = best), which rank to themselves.
        nemenyi = sp.posthoc_nemenyi_friedman(ranks.to_numpy())
        nemenyi.index = nemenyi.columns = list(values.columns)
    return RankTest(ranks, mean_ranks, n, k, statistic, p, alpha, q, cd, nemenyi)
