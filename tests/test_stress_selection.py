"""Vectorised selection over stress repeats equals `methods.selection` repeat by repeat."""

from __future__ import annotations

import numpy as np
import pytest

from noharm.bench.stress.selection import ValStats, all_choices, choose, enumerate_ip
from noharm.methods.selection import TOL, select, select_safe


def random_problems(rng, r: int, g: int, grid: bool = False):
    if grid:  # dyadic values: exact, and full of ties
        expert = rng.integers(8, 17, (r, g)) / 16
        erm = rng.integers(8, 17, (r, g)) / 16
    else:
        expert = rng.uniform(0.5, 1.0, (r, g))
        erm = rng.uniform(0.5, 1.0, (r, g))
    expert[rng.random((r, g)) < 0.1] = np.nan
    erm[rng.random((r, g)) < 0.05] = np.nan
    sizes = rng.integers(1, 200, (r, g)).astype(float)
    return expert, erm, sizes


def _keys(strategy, expert, erm, sizes, use):
    values = np.where(use, expert, erm)
    finite = values[np.isfinite(values)]
    gap = finite.max() - finite.min() if len(finite) else 0.0
    w = np.where(np.isfinite(erm), sizes, 0.0)
    w = w / w.sum() if w.sum() else w
    gain = float(np.nansum(np.where(use, w * (expert - erm), 0.0)))
    return (gap, -gain, int(use.sum())) if strategy == "ip-gap" else (-gain, int(use.sum()))


@pytest.mark.parametrize("strategy", ["ip-gap", "ip-utility"])
def test_enumeration_equals_the_integer_program(strategy):
    rng = np.random.default_rng(0)
    for g in (1, 2, 3, 5):
        expert, erm, sizes = random_problems(rng, 12, g)
        use = enumerate_ip(strategy, expert, erm, sizes)
        for i in range(len(use)):
            # Continuous values: the optimum is unique, so the choices must be identical.
            assert tuple(use[i]) == select(expert[i], erm[i], sizes[i], strategy).use_expert


@pytest.mark.parametrize("strategy", ["ip-gap", "ip-utility"])
def test_enumeration_attains_the_integer_programs_keys_under_ties(strategy):
    rng = np.random.default_rng(1)
    expert, erm, sizes = random_problems(rng, 20, 4, grid=True)
    use = enumerate_ip(strategy, expert, erm, sizes)
    for i in range(len(use)):
        ip = np.array(select(expert[i], erm[i], sizes[i], strategy).use_expert)
        ours = _keys(strategy, expert[i], erm[i], sizes[i], use[i])
        theirs = _keys(strategy, expert[i], erm[i], sizes[i], ip)
        assert np.allclose(ours, theirs, atol=10 * TOL)


def test_fallback_to_the_solver_above_the_enumeration_limit():
    rng = np.random.default_rng(2)
    expert, erm, sizes = random_problems(rng, 4, 3)
    stats = ValStats(n=sizes, expert=expert, erm=erm, b=np.zeros_like(sizes), c=np.zeros_like(sizes))
    for strategy in ("ip-gap", "ip-utility"):
        assert np.array_equal(choose(strategy, stats, max_enumerate=0), choose(strategy, stats))


def test_all_choices_lists_every_subset_once():
    masks = all_choices(4)
    assert masks.shape == (16, 4) and not masks[0].any()
    assert len({tuple(m) for m in masks}) == 16


def test_greedy_and_safe_match_the_single_problem_functions():
    rng = np.random.default_rng(3)
    r, g, n = 30, 3, 80
    groups = np.repeat(np.arange(g), n)
    e = rng.random((r, g * n)) < 0.8
    c = rng.random((r, g * n)) < 0.78
    stats = ValStats(
        n=np.full((r, g), float(n)),
        expert=np.stack([np.bincount(groups, e[i], g) / n for i in range(r)]),
        erm=np.stack([np.bincount(groups, c[i], g) / n for i in range(r)]),
        b=np.stack([np.bincount(groups, e[i] & ~c[i], g) for i in range(r)]),
        c=np.stack([np.bincount(groups, ~e[i] & c[i], g) for i in range(r)]),
    )
    greedy, safe = choose("greedy", stats), choose("safe", stats, delta=0.1)
    for i in range(r):
        assert tuple(greedy[i]) == select(stats.expert[i], stats.erm[i], stats.n[i], "greedy").use_expert
        assert tuple(safe[i]) == select_safe(e[i], c[i], groups, g, delta=0.1).use_expert
    assert safe.sum() < greedy.sum()


def test_unknown_selector():
    stats = ValStats(*(np.ones((1, 2)) for _ in range(5)))
    with pytest.raises(ValueError, match="unknown selector 'best'"):
        choose("best", stats)
