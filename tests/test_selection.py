"""The no-harm selector: each strategy equals brute force over all 2^G choices; bad input fails clearly."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noharm.methods import selection
from noharm.methods.selection import STRATEGIES, SelectionResult, select

# Values on a dyadic grid: exact in floating point, and coarse enough to produce ties.
GRID = [k / 16 for k in range(17)]


@st.composite
def problems(draw, max_groups: int = 10, with_nan: bool = True):
    g = draw(st.integers(1, max_groups))
    value = st.sampled_from(GRID + ([math.nan] if with_nan else []))
    erm = draw(st.lists(value, min_size=g, max_size=g))
    expert = draw(st.lists(value, min_size=g, max_size=g))
    sizes = draw(st.lists(st.sampled_from([1, 2, 3, 4, 8]), min_size=g, max_size=g))
    metric = draw(st.sampled_from(["accuracy", "auc"]))
    return expert, erm, sizes, metric


def _stats(expert, erm, sizes, metric, use):
    """(gap, utility, count) of one choice, computed independently of the module."""
    values = [e if u else r for e, r, u in zip(expert, erm, use)]
    finite = [(v, s) for v, s in zip(values, sizes) if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, sum(use)
    gap = max(v for v, _ in finite) - min(v for v, _ in finite)
    if metric == "accuracy":
        utility = sum(v * s for v, s in finite) / sum(s for _, s in finite)
    else:
        utility = sum(v for v, _ in finite) / len(finite)
    return gap, utility, sum(use)


def _no_harm(expert, erm, use) -> bool:
    # Taking an expert needs both values known and the expert at least as good.
    return all(not u or (not math.isnan(e) and not math.isnan(r) and e >= r) for e, r, u in zip(expert, erm, use))


def brute_force(expert, erm, sizes, metric, strategy):
    """Best key and every choice attaining it, enumerating all 2^G choices."""
    g = len(erm)
    erm_gap = _stats(expert, erm, sizes, metric, [False] * g)[0]
    best_key, best = None, []
    for use in itertools.product([False, True], repeat=g):
        if not _no_harm(expert, erm, use):
            continue
        gap, utility, count = _stats(expert, erm, sizes, metric, use)
        if strategy == "ip-gap":
            key = (gap, -utility, count)
        elif strategy == "ip-utility":
            if not math.isnan(erm_gap) and gap > erm_gap:
                continue
            key = (-utility, count)
        elif strategy == "greedy":
            # Greedy = best utility with no harm, fewest experts (the utility is separable).
            key = (-utility, count)
        else:
            raise AssertionError(strategy)
        key = tuple(0.0 if isinstance(k, float) and math.isnan(k) else k for k in key)
        if best_key is None or key < best_key:
            best_key, best = key, [use]
        elif key == best_key:
            best.append(use)
    return best_key, best


def _key(result: SelectionResult, expert, erm, sizes, metric):
    gap, utility, count = _stats(expert, erm, sizes, metric, result.use_expert)
    key = {"ip-gap": (gap, -utility, count)}.get(result.strategy, (-utility, count))
    return tuple(0.0 if isinstance(k, float) and math.isnan(k) else k for k in key)


@pytest.mark.parametrize("strategy", ["greedy", "ip-gap", "ip-utility"])
@settings(max_examples=100, deadline=None)
@given(problem=problems())
def test_strategy_equals_brute_force(strategy, problem):
    expert, erm, sizes, metric = problem
    result = select(expert, erm, sizes, strategy, metric=metric)
    best_key, best = brute_force(expert, erm, sizes, metric, strategy)
    assert result.status in ("Optimal", "greedy")
    assert _no_harm(expert, erm, result.use_expert)
    assert _key(result, expert, erm, sizes, metric) == best_key
    assert result.use_expert in best
    if len(best) == 1:
        assert result.use_expert == best[0]
    # The reported numbers describe the choice.
    gap, utility, _ = _stats(expert, erm, sizes, metric, result.use_expert)
    np.testing.assert_array_equal(result.values, [e if u else r for e, r, u in zip(expert, erm, result.use_expert)])
    assert (math.isnan(gap) and math.isnan(result.gap)) or result.gap == pytest.approx(gap, abs=1e-12)
    assert (math.isnan(utility) and math.isnan(result.utility)) or result.utility == pytest.approx(utility, abs=1e-12)


def test_ip_gap_breaks_ties_by_utility_then_fewer_experts():
    # Groups 1 and 2 can both rise to 0.75 without changing the gap (set by groups 0 and 3):
    # the utility prefers both; group 4's expert equals ERM, so it is never taken.
    erm = [0.25, 0.5, 0.5, 0.75, 0.5]
    expert = [0.0, 0.75, 0.625, 0.5, 0.5]
    r = select(expert, erm, [1, 1, 1, 1, 1], "ip-gap")
    assert r.use_expert == (False, True, True, False, False)
    assert r.gap == 0.5 and r.status == "Optimal"
    # An expert merely equal to ERM changes neither gap nor utility: the tie goes to ERM everywhere.
    for strategy in ("greedy", "ip-gap", "ip-utility"):
        assert select([0.5, 0.75], [0.5, 0.75], [1, 1], strategy).use_expert == (False, False)


def test_ip_utility_respects_erm_gap():
    # ERM's gap is 0.25; the expert of group 1 would lift it to 1.0 -> gap 0.5: refused.
    erm, expert, sizes = [0.5, 0.75], [0.625, 1.0], [10, 10]
    assert select(expert, erm, sizes, "greedy").use_expert == (True, True)
    r = select(expert, erm, sizes, "ip-utility")
    assert r.use_expert == (True, False) and r.gap == 0.125 and r.status == "Optimal"


def test_accuracy_utility_is_size_weighted_and_auc_is_plain_mean():
    erm, expert, sizes = [0.5, 0.5], [0.75, 0.5], [3, 1]
    assert select(expert, erm, sizes, "greedy", metric="accuracy").utility == pytest.approx((0.75 * 3 + 0.5) / 4)
    assert select(expert, erm, sizes, "greedy", metric="auc").utility == pytest.approx((0.75 + 0.5) / 2)


def test_nan_groups_keep_erm():
    expert = [math.nan, 0.9, 0.9]
    erm = [0.9, math.nan, 0.5]
    for strategy in ("greedy", "ip-gap", "ip-utility"):
        r = select(expert, erm, [5, 5, 5], strategy, metric="auc")
        assert r.use_expert == (False, False, True), strategy
        assert math.isnan(r.values[1]) and r.values[0] == 0.9
    # Trivial strategies ignore the rule: "experts" is the method itself.
    assert select(expert, erm, [5, 5, 5], "experts").use_expert == (True, True, True)
    assert select(expert, erm, [5, 5, 5], "erm").use_expert == (False, False, False)


def test_trivial_strategies_and_status():
    r = select([0.9, 0.1], [0.5, 0.5], [1, 1], "experts")
    assert r.use_expert == (True, True) and r.values == (0.9, 0.1) and r.status == "trivial"
    assert r.gap == pytest.approx(0.8) and r.strategy == "experts"
    r = select([0.9, 0.1], [0.5, 0.5], [1, 1], "erm")
    assert r.use_expert == (False, False) and r.gap == 0.0 and r.utility == 0.5


def test_failed_solve_falls_back_to_erm(monkeypatch):
    monkeypatch.setattr(selection, "_solve", lambda prob: "Infeasible")
    r = select([0.9, 0.8], [0.5, 0.5], [1, 1], "ip-gap")
    assert r.use_expert == (False, False)
    assert r.status == "Infeasible (fell back to ERM)"
    assert r.values == (0.5, 0.5)


def test_solver_error_falls_back_to_erm(monkeypatch):
    import pulp

    def broken(self, *args, **kwargs):
        raise pulp.PulpSolverError("cbc not found")

    monkeypatch.setattr(pulp.LpProblem, "solve", broken)
    r = select([0.9, 0.8], [0.5, 0.5], [1, 1], "ip-utility")
    assert r.use_expert == (False, False) and r.status.startswith("Error: cbc not found")


def test_registry_takes_new_strategies(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "first-only", lambda p: (np.arange(p.n_groups) == 0, "custom"))
    r = select([0.1, 0.9], [0.5, 0.5], [1, 1], "first-only")
    assert r.use_expert == (True, False) and r.status == "custom"
    with pytest.raises(ValueError, match="registered twice"):
        selection.register_strategy("greedy")(lambda p: (None, ""))


@pytest.mark.parametrize("args, message", [
    (([0.5], [0.5], [1], "best"), "unknown selection strategy 'best'; choose one of: erm, experts, greedy"),
    (([0.5, 0.6], [0.5], [1], "greedy"), "one value per group each, got lengths"),
    (([], [], [], "greedy"), "at least one group"),
    (([0.5], [0.5], [0], "greedy"), "size of group 0 is 0.0; sizes must be positive"),
    (([0.5], [0.5], [-3], "greedy"), "sizes must be positive"),
    (([math.inf], [0.5], [1], "greedy"), "expert metric of group 0 is inf"),
    (([0.5], ["x"], [1], "greedy"), "'erm' must be a sequence of numbers"),
    (([[0.5]], [[0.5]], [[1]], "greedy"), "one value per group, got shape"),
])
def test_bad_input_raises_clear_errors(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        select(*args)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown selection metric 'f1'; choose one of: accuracy, auc"):
        select([0.5], [0.5], [1], "greedy", metric="f1")


def test_result_is_frozen():
    r = select([0.9], [0.5], [1], "greedy")
    with pytest.raises(AttributeError):
        r.status = "x"  # type: ignore[misc]


def test_scales_to_many_groups():
    # O(G) formulation: a 1,024-group problem solves (timing lives in bench/perf).
    rng = np.random.default_rng(0)
    erm = rng.uniform(0.5, 0.9, 1024)
    expert = erm + rng.normal(0, 0.05, 1024)
    sizes = rng.integers(10, 500, 1024)
    for strategy in ("ip-gap", "ip-utility"):
        r = select(expert, erm, sizes, strategy)
        assert r.status == "Optimal"
        assert all(v >= e for v, e in zip(r.values, erm))
        greedy = select(expert, erm, sizes, "greedy")
        assert r.gap <= greedy.gap + 1e-12 or strategy == "ip-utility"
        assert r.utility <= greedy.utility + 1e-12
