"""The `safe` selector (paired tests of the expert's advantage) and group-blind application (`blind`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from noharm.methods.selection import (STRATEGIES, apply_blind, blind_report, evidence_from_counts, routing_accuracy,
                               safe_evidence, select, select_safe, sign_test_p_value, worst_case_p_value)


def paired(n: int, p_b: float, p_c: float, p_both: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of expert and ERM on n samples: b-type (expert only), c-type (ERM only), both, neither."""
    kind = rng.choice(4, size=n, p=[p_b, p_c, p_both, 1 - p_b - p_c - p_both])
    return np.isin(kind, (0, 2)), np.isin(kind, (1, 2))


def test_sign_test_matches_scipy_binomtest():
    for b, c in [(0, 0), (3, 0), (7, 2), (10, 10), (2, 9), (40, 22)]:
        expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert sign_test_p_value(b, c) == pytest.approx(expected, rel=1e-9)


def test_counts_are_paired_per_group():
    e = np.array([1, 1, 0, 0, 1, 1, 0, 1])
    r = np.array([1, 0, 1, 0, 0, 0, 0, 1])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ev = safe_evidence(e, r, g, 3)
    assert ev.n.tolist() == [4, 4, 0]
    assert ev.b.tolist() == [1, 2, 0] and ev.c.tolist() == [1, 0, 0]
    assert ev.p_value[2] == 1.0 and not ev.accept[2]  # no samples: no evidence


@pytest.mark.parametrize("test", ["sign", "bootstrap"])
def test_declines_a_small_advantage_on_few_samples(test):
    # True advantage 0.02 (6% vs 4% discordant), 100 samples per draw: rarely significant.
    rng = np.random.default_rng(1)
    accepted, greedy = [], []
    for seed in range(200):
        e, r = paired(100, 0.06, 0.04, 0.7, rng)
        accepted.append(select_safe(e, r, np.zeros(100, int), 1, delta=0.05, test=test, n_boot=300,
                                    seed=seed).use_expert[0])
        greedy.append(select([e.mean()], [r.mean()], [100], "greedy").use_expert[0])
    assert np.mean(accepted) < 0.2
    assert np.mean(greedy) > 0.5  # greedy takes it whenever it is ahead at all


@pytest.mark.parametrize("test", ["sign", "bootstrap"])
def test_accepts_a_large_advantage(test):
    rng = np.random.default_rng(2)
    e, r = paired(300, 0.20, 0.03, 0.6, rng)
    res = select_safe(e, r, np.zeros(300, int), 1, delta=0.05, test=test)
    assert res.use_expert == (True,)
    ev = safe_evidence(e, r, np.zeros(300, int), 1, delta=0.05, test=test)
    diff = e.mean() - r.mean()
    assert 0 < ev.lower_bound[0] < diff  # a lower bound below the observed advantage


@pytest.mark.parametrize("n, p_disc", [(30, 0.1), (60, 0.2), (400, 0.05)])
def test_false_acceptance_rate_of_sign_test_is_at_most_delta(n, p_disc):
    rng = np.random.default_rng(n)
    k = 20000
    for p_b, p_c in [(p_disc, p_disc), (p_disc * 0.8, p_disc)]:  # no advantage, and a worse expert
        counts = rng.multinomial(n, [p_b, p_c, 1 - p_b - p_c], size=k)
        for delta in (0.05, 0.1):
            ev = evidence_from_counts(np.full(k, n), counts[:, 0], counts[:, 1], delta=delta, test="sign")
            # The exact test is valid for every n: the rate stays below delta up to Monte Carlo error.
            assert ev.accept.mean() <= delta + 3 * math.sqrt(delta * (1 - delta) / k)


def test_false_acceptance_rate_of_bootstrap_is_near_delta():
    rng = np.random.default_rng(7)
    k, n, delta = 1500, 300, 0.1
    counts = rng.multinomial(n, [0.1, 0.1, 0.8], size=k)
    ev = evidence_from_counts(np.full(k, n), counts[:, 0], counts[:, 1], delta=delta, test="bootstrap", n_boot=300)
    assert ev.accept.mean() <= delta + 3 * math.sqrt(delta * (1 - delta) / k)


def test_bootstrap_is_reproducible_from_seed():
    a = evidence_from_counts([100, 80], [12, 9], [5, 6], test="bootstrap", seed=3, n_boot=200)
    b = evidence_from_counts([100, 80], [12, 9], [5, 6], test="bootstrap", seed=3, n_boot=200)
    c = evidence_from_counts([100, 80], [12, 9], [5, 6], test="bootstrap", seed=4, n_boot=200)
    assert np.array_equal(a.lower_bound, b.lower_bound)
    assert not np.array_equal(a.lower_bound, c.lower_bound)


def test_select_safe_result_fields():
    e = np.r_[np.ones(90), np.zeros(10), np.ones(50), np.zeros(50)]
    r = np.r_[np.ones(60), np.zeros(40), np.ones(55), np.zeros(45)]
    g = np.r_[np.zeros(100, int), np.ones(100, int)]
    res = select_safe(e, r, g, 2)
    assert res.use_expert == (True, False)
    assert res.values == pytest.approx((0.9, 0.55))
    assert res.gap == pytest.approx(0.35) and res.utility == pytest.approx(0.725)
    assert res.strategy == "safe" and "sign" in res.status


def test_registered_safe_uses_worst_case_pairing():
    assert "safe" in STRATEGIES
    rng = np.random.default_rng(5)
    for _ in range(100):
        n = int(rng.integers(20, 400))
        e, r = paired(n, rng.uniform(0, 0.15), rng.uniform(0, 0.1), rng.uniform(0.3, 0.6), rng)
        exact = select_safe(e, r, np.zeros(n, int), 1).use_expert[0]
        aggregate = select([e.mean()], [r.mean()], [n], "safe").use_expert[0]
        assert not aggregate or exact  # conservative: never takes an expert the paired test declines
        assert worst_case_p_value(e.mean(), r.mean(), n) >= sign_test_p_value(*_bc(e, r)) - 1e-12
    # Highly concordant models: the paired test sees the advantage, the worst case cannot.
    e = np.r_[np.ones(860), np.zeros(140)]
    r = np.r_[np.ones(840), np.zeros(160)]
    assert select_safe(e, r, np.zeros(1000, int), 1).use_expert == (True,)
    assert select([0.86], [0.84], [1000], "safe").use_expert == (False,)


def _bc(e, r):
    return int((e & ~r).sum()), int((~e & r).sum())


def test_safe_bad_input():
    with pytest.raises(ValueError, match="delta must be in"):
        select_safe([1], [0], [0], 1, delta=0.7)
    with pytest.raises(ValueError, match="unknown safe test 'exact'"):
        select_safe([1], [0], [0], 1, test="exact")
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        select_safe([1, 0], [0], [0, 0], 1)
    with pytest.raises(ValueError, match="0/1 correctness"):
        select_safe([0.5], [0], [0], 1)
    with pytest.raises(ValueError, match=r"integer ids in 0..0"):
        select_safe([1], [0], [3], 1)
    with pytest.raises(ValueError, match="tests paired accuracy; got metric 'auc'"):
        select([0.9], [0.8], [100], "safe", metric="auc")


def test_apply_blind_routes_by_predicted_group():
    routed = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    erm = np.array([[0.5, 0.5], [0.4, 0.6], [0.1, 0.9], [0.7, 0.3]])
    pred = np.array([0, 1, 1, 0])
    mixed = apply_blind([False, True], pred, routed, erm)
    assert np.array_equal(mixed, np.array([erm[0], routed[1], routed[2], erm[3]]))
    with pytest.raises(ValueError, match="predicted groups must lie in 0..1"):
        apply_blind([False, True], np.array([0, 2, 1, 0]), routed, erm)


def test_routing_accuracy_and_report_by_hand():
    group = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 1, 0, 1, 1])
    overall, per = routing_accuracy(pred, group, 3)
    assert overall == pytest.approx(0.8)
    assert per[0] == pytest.approx(2 / 3) and per[1] == 1.0 and math.isnan(per[2])
    y = np.array([1, 1, 0, 0, 1])
    routed = np.eye(2)[[1, 0, 0, 0, 0]]  # right, wrong, right, right, wrong
    erm = np.eye(2)[[1, 1, 1, 0, 1]]  # right, right, wrong, right, right
    report = blind_report(y, group, pred, [True, True], routed, erm, ["A", "B"], tolerance=0.1)
    assert report.loc["A", "blind"] == pytest.approx(2 / 3) and report.loc["A", "erm"] == pytest.approx(2 / 3)
    assert report.loc["B", "blind"] == pytest.approx(0.5) and report.loc["B", "erm"] == 1.0
    assert report.loc["B", "harm"] == pytest.approx(0.5) and bool(report.loc["B", "harmed"])
    assert not bool(report.loc["A", "harmed"])
    assert report.loc["A", "routing_accuracy"] == pytest.approx(2 / 3)
