"""Each stress scenario shifts what it says it shifts, reproducibly from the seed; bad suite entries fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from noharm.bench.errors import ConfigError
from noharm.bench.stress.scenarios import (BLOCK, ScenarioSkipped, SplitView, block_rng, draw_strata, make_scenarios,
                                    shifted_prior)


def view(seed: int, sizes=(300, 120, 40), pos=(0.3, 0.5, 0.2)) -> SplitView:
    """A split with groups of the given sizes and positive rates (exact counts, shuffled)."""
    rng = np.random.default_rng(seed)
    y, g = [], []
    for a, (n, p) in enumerate(zip(sizes, pos)):
        k = int(round(n * p))
        y += [1] * k + [0] * (n - k)
        g += [a] * n
    order = rng.permutation(len(y))
    return SplitView(y=np.array(y)[order], group=np.array(g)[order], n_groups=len(sizes), num_classes=2)


VAL, TEST = view(0), view(1, sizes=(600, 250, 90), pos=(0.3, 0.5, 0.25))


def one(spec: dict):
    (scenario,) = make_scenarios(spec, "test")
    return scenario


def group_totals(weights: np.ndarray, split: SplitView) -> np.ndarray:
    """[R, G] weighted rows per group."""
    return np.stack([np.bincount(split.group, w, split.n_groups) for w in weights])


class Dense:
    """A draw with dense [R, N] multiplicities (None for a split kept whole)."""

    def __init__(self, d):
        self.val = None if d.val is None else d.val.dense(len(VAL))
        self.test = None if d.test is None else d.test.dense(len(TEST))
        self.deterministic = d.deterministic


def draw(scenario, severity, seed=0, target=None, block=0):
    t = scenario.target_group(VAL, ("a", "b", "c")) if target is None else target
    return Dense(scenario.draw(VAL, TEST, severity, t, block_rng(seed, scenario.name, 0, block), BLOCK))


def test_val_group_fraction_keeps_a_fraction_of_one_group():
    s = one({"kind": "val-group-fraction"})
    assert s.target_group(VAL, ("a", "b", "c")) == 2  # the smallest group by default
    d = draw(s, 0.25)
    assert d.test is None
    assert set(np.unique(d.val)) <= {0.0, 1.0}  # a subset: without replacement
    assert np.array_equal(group_totals(d.val, VAL), np.tile([300, 120, 10], (BLOCK, 1)))
    # Different repeats keep different rows of the target group.
    assert len({tuple(np.flatnonzero(w)) for w in d.val}) > BLOCK // 2
    assert draw(s, 1.0).deterministic  # nothing changes: one deterministic repeat


def test_val_group_fraction_named_group():
    s = one({"kind": "val-group-fraction", "group": "a"})
    assert s.target_group(VAL, ("a", "b", "c")) == 0
    d = draw(s, 0.5)
    assert np.array_equal(group_totals(d.val, VAL)[0], [150, 120, 40])
    with pytest.raises(ScenarioSkipped, match="group 'zz' is not a group of this run"):
        one({"kind": "val-group-fraction", "group": "zz"}).target_group(VAL, ("a", "b", "c"))


def test_val_size_per_group_counts():
    d = draw(one({"kind": "val-size"}), 100)
    assert np.array_equal(group_totals(d.val, VAL)[0], [100, 100, 40])  # capped at the group's rows
    boot = draw(one({"kind": "val-size", "replace": True}), 100)
    assert np.array_equal(group_totals(boot.val, VAL), np.full((BLOCK, 3), 100.0))
    assert boot.val.max() > 1  # with replacement some rows repeat
    assert boot.test is not None and np.array_equal(group_totals(boot.test, TEST)[0], [600, 250, 90])


@pytest.mark.parametrize("severity", [0.2, -0.15, 0.6])
def test_label_shift_sets_the_groups_prior_in_test(severity):
    s = one({"kind": "label-shift", "group": "b"})
    d = draw(s, severity)
    assert d.val is None
    target = np.clip(0.5 + severity, 0, 1)
    for w in d.test[:10]:
        in_b = TEST.group == 1
        prior = (w[in_b] * TEST.y[in_b]).sum() / w[in_b].sum()
        assert prior == pytest.approx(target, abs=1 / w[in_b].sum())
        # Other groups are untouched.
        assert np.all(w[~in_b] == 1)


def test_label_shift_with_replacement_keeps_the_group_size_and_can_shift_validation():
    s = one({"kind": "label-shift", "split": "val", "replace": True, "group": "a"})
    d = draw(s, 0.3)
    in_a = VAL.group == 0
    for w in d.val[:5]:
        assert w[in_a].sum() == 300
        assert (w[in_a] * VAL.y[in_a]).sum() / 300 == pytest.approx(0.6, abs=1 / 300)


def test_shifted_prior_edges():
    assert shifted_prior(np.array([70, 30]), 1, 0.9).tolist() == [0.0, 1.0]  # clipped
    assert shifted_prior(np.array([70, 0]), 1, 0.2).tolist() == [1.0, 0.0]  # no rows of the class: cannot raise it
    q = shifted_prior(np.array([20, 30, 50]), 0, 0.3)
    assert q[0] == pytest.approx(0.5) and q[1] / q[2] == pytest.approx(30 / 50)


@pytest.mark.parametrize("share", [0.05, 0.5, 0.8])
def test_test_group_mix_sets_the_groups_share(share):
    d = draw(one({"kind": "test-group-mix"}), share)
    assert d.val is None
    totals = group_totals(d.test, TEST)[0]
    assert totals[2] / totals.sum() == pytest.approx(share, abs=2 / totals.sum())
    # The other groups keep their relative shares (up to rounding each count).
    rest = totals[0] + totals[1]
    assert np.abs(totals[:2] - np.array([600, 250]) * rest / 850).max() <= 1


def test_weights_store_only_the_redrawn_rows():
    s = one({"kind": "val-group-fraction"})
    d = s.draw(VAL, TEST, 0.5, 2, block_rng(0, s.name, 0, 0), BLOCK)
    assert sorted(d.val.rows) == sorted(np.flatnonzero(VAL.group == 2))  # the target group only
    assert d.val.w.shape == (BLOCK, 40)


def test_draw_strata_without_replacement_is_uniform():
    strata = np.zeros(10, int)
    w = draw_strata(np.random.default_rng(0), strata, np.array([3]), 4000, replace=False).dense(10)
    assert np.all(w.sum(axis=1) == 3)
    assert np.allclose(w.mean(axis=0), 0.3, atol=0.03)  # every row equally likely
    with pytest.raises(ValueError, match="cannot draw 11 of 10 rows without replacement"):
        draw_strata(np.random.default_rng(0), strata, np.array([11]), 2, replace=False)


def test_repeats_are_reproducible_from_the_seed():
    s = one({"kind": "val-size"})
    a, b, c = draw(s, 50, seed=4), draw(s, 50, seed=4), draw(s, 50, seed=5)
    assert np.array_equal(a.val, b.val)
    assert not np.array_equal(a.val, c.val)
    # Blocks have their own streams: block 1 does not depend on how block 0 was used.
    one_block = draw(s, 50, seed=4, block=1)
    assert not np.array_equal(one_block.val, a.val)
    assert np.array_equal(one_block.val, draw(s, 50, seed=4, block=1).val)


def test_corruption_entry_expands_per_corruption():
    scenarios = make_scenarios({"kind": "corruption", "corruptions": ["noise", "jpeg"], "severities": [0, 3]}, "x")
    assert [s.name for s in scenarios] == ["corruption-noise", "corruption-jpeg"]
    assert scenarios[0].rescores and scenarios[0].options["corruption"] == "noise"
    assert draw(scenarios[0], 3).deterministic


@pytest.mark.parametrize("spec, message", [
    ({"kind": "drift"}, "test: unknown scenario kind 'drift'; choose one of: val-group-fraction"),
    ({"kind": "val-size", "size": 3}, r"unknown key\(s\) size for scenario 'val-size'"),
    ({"kind": "val-size", "severities": [10, 2.5]}, "positive integer; got 2.5"),
    ({"kind": "val-group-fraction", "severities": [0.0]}, r"in \(0, 1\]; got 0.0"),
    ({"kind": "test-group-mix", "severities": [1.0]}, r"share of test, in \(0, 1\); got 1.0"),
    ({"kind": "label-shift", "split": "train"}, "label-shift split must be val or test"),
    ({"kind": "label-shift", "severities": "0.1"}, "severities must be a non-empty list of numbers"),
    ({"kind": "val-size", "replace": "yes"}, "replace must be true or false"),
    ({"kind": "corruption", "corruptions": ["fog"]}, r"unknown corruption\(s\) \['fog'\]"),
    ({"kind": "corruption", "severities": [6]}, "integer 0..5"),
    (["val-size"], "a scenario is a mapping"),
])
def test_bad_scenario_entries(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_scenarios(spec, "test")
