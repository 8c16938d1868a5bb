"""Batch forms of the selection strategies: one registry beside `STRATEGIES`, the same choices repeat by repeat."""

from __future__ import annotations

import numpy as np
import pytest

from noharm.bench.stress.runner import base_of
from noharm.bench.stress.selection import ValStats, choose
from noharm.methods import selection as S
from noharm.methods.selection_batch import (BATCH_STRATEGIES, ProblemBatch, register_batch_strategy, select_batch,
                                            select_each)


def random_batch(seed: int, r: int = 25, g: int = 4, metric: str = "accuracy") -> ProblemBatch:
    rng = np.random.default_rng(seed)
    expert, erm = rng.uniform(0.5, 1.0, (r, g)), rng.uniform(0.5, 1.0, (r, g))
    expert[rng.random((r, g)) < 0.1] = np.nan
    erm[rng.random((r, g)) < 0.05] = np.nan
    return ProblemBatch(expert=expert, erm=erm, sizes=rng.integers(1, 200, (r, g)).astype(float), metric=metric)


def test_every_built_in_strategy_has_a_batch_form():
    assert set(BATCH_STRATEGIES) == set(S.STRATEGIES)


@pytest.mark.parametrize("metric", ["accuracy", "auc"])
@pytest.mark.parametrize("strategy", ["erm", "experts", "greedy", "ip-gap", "ip-utility"])
def test_batch_form_equals_the_strategy_repeat_by_repeat(strategy, metric):
    batch = random_batch(0, metric=metric)
    use = select_batch(strategy, batch)
    assert use.shape == batch.shape and use.dtype == bool
    # Continuous values: each optimum is unique, so the choices must be identical.
    assert np.array_equal(use, select_each(strategy, batch))
    if strategy == "greedy":
        assert 0 < use.sum() < use.size  # the comparison above is not between two all-False arrays


def test_a_strategy_without_a_batch_form_runs_repeat_by_repeat_and_is_a_stress_selector(monkeypatch):
    monkeypatch.setitem(S.STRATEGIES, "first-only", lambda p: (np.arange(p.n_groups) == 0, "custom"))
    batch = random_batch(1, r=3, g=3)
    assert select_batch("first-only", batch).tolist() == [[True, False, False]] * 3
    stats = ValStats(n=batch.sizes, expert=batch.expert, erm=batch.erm, b=np.zeros((3, 3)), c=np.zeros((3, 3)))
    assert choose("first-only", stats).tolist() == [[True, False, False]] * 3
    assert base_of("blind:first-only") == ("first-only", True)


def test_safe_on_a_batch_needs_the_paired_counts():
    with pytest.raises(ValueError, match="'safe' on a batch needs the paired counts"):
        select_batch("safe", random_batch(2))


def test_registration_and_inputs_are_checked():
    with pytest.raises(ValueError, match="register the strategy itself first"):
        register_batch_strategy("oracle")(lambda batch: None)
    with pytest.raises(ValueError, match="batch form of selection strategy 'greedy' registered twice"):
        register_batch_strategy("greedy")(lambda batch: None)
    with pytest.raises(ValueError, match="unknown selection strategy 'oracle'"):
        select_batch("oracle", random_batch(3))
    with pytest.raises(ValueError, match="unknown selection metric 'f1'"):
        random_batch(3, metric="f1")
    with pytest.raises(ValueError, match=r"delta must be in \(0, 0.5\)"):
        ProblemBatch(expert=np.ones((1, 2)), erm=np.ones((1, 2)), sizes=np.ones((1, 2)), delta=0.7)
