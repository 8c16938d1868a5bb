"""The vectorised stress engine equals a plain loop over repeats with `methods.selection`, and is reproducible."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from noharm.analysis import predictions as P
from noharm.bench.errors import ConfigError
from noharm.bench.stress.runner import COLUMNS, StressData, StressSettings, run_scenarios
from noharm.bench.stress.scenarios import BLOCK, block_rng, make_scenarios
from noharm.methods.selection import select, select_safe

GROUPS = ("A", "B", "C")


def synthetic(n: int = 3000, seed: int = 0, routing: bool = True):
    """Method and ERM predictions whose experts help A, hurt C slightly and tie B; a 90%-accurate router."""
    rng = np.random.default_rng(seed)
    group = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    y = rng.integers(0, 2, n)
    split = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.2, 0.4, 0.4])]
    e_ok = rng.random(n) < np.array([0.86, 0.80, 0.78])[group]
    r_ok = rng.random(n) < np.array([0.84, 0.80, 0.79])[group]
    t_ok = rng.random(n) < 0.8

    def proba(ok):
        pred = np.where(ok, y, 1 - y)
        return np.eye(2)[pred] * 0.8 + 0.1

    base = pd.DataFrame({"sample_id": np.arange(n).astype(str), "split": split, "y": y,
                         "group": np.array(GROUPS)[group], "group_id": group})
    method, erm = P.build(base, {"experts": proba(e_ok)}), P.build(base, {"model": proba(r_ok)})
    kw = {}
    if routing:
        kw = {"pred_group": np.where(rng.random(n) < 0.9, group, (group + 1) % 3), "routed_proba": proba(t_ok)}
    data = StressData.from_predictions(method, erm, tags={"dataset": "syn", "attribute": "g", "method": "m", "seed": 0},
                                       **kw)
    return data


def naive(data: StressData, scenario, severity_index: int, settings: StressSettings, selector: str):
    """Outcomes per repeat by plain loops: dense weights, `select` / `select_safe`, per-group accuracies."""
    G = data.n_groups
    val, test = data.val, data.test
    vv, tv = val.view(G, 2), test.view(G, 2)
    target = scenario.target_group(vv, data.group_names)
    severity = scenario.severities[severity_index]
    blind = selector.startswith("blind")
    base = "greedy" if selector == "blind" else selector

    def choice(w):
        n = np.array([w[val.group == a].sum() for a in range(G)])
        acc = lambda c: np.array([np.average(c[val.group == a], weights=w[val.group == a]) if n[a] else math.nan
                                  for a in range(G)])
        if base == "safe":
            reps = w.astype(int)
            return np.array(select_safe(np.repeat(val.expert, reps), np.repeat(val.erm, reps),
                                        np.repeat(val.group, reps), G, delta=settings.delta).use_expert)
        return np.array(select(acc(val.expert), acc(val.erm), np.maximum(n, 1), base).use_expert)

    unshifted = choice(np.ones(len(val.y)))
    out = []
    for b in range(math.ceil(settings.repeats / BLOCK)):
        d = scenario.draw(vv, tv, severity, target, block_rng(settings.seed, scenario.name, severity_index, b), BLOCK)
        wv = np.ones((BLOCK, len(val.y))) if d.val is None else d.val.dense(len(val.y))
        wt = np.ones((BLOCK, len(test.y))) if d.test is None else d.test.dense(len(test.y))
        for r in range(min(BLOCK, settings.repeats - b * BLOCK)):
            use = choice(wv[r])
            if blind:
                ok = np.where(use[test.pred_group], test.routed, test.erm)
            else:
                ok = np.where(use[test.group], test.expert, test.erm)
            comp = np.array([np.average(ok[test.group == a], weights=wt[r][test.group == a]) for a in range(G)])
            erm = np.array([np.average(test.erm[test.group == a], weights=wt[r][test.group == a]) for a in range(G)])
            harm = (erm - comp).max()
            out.append({"harmed": harm > settings.tolerance, "harm": max(harm, 0.0), "gap": comp.max() - comp.min(),
                        "worst": comp.min(), "changed": (use != unshifted).any()})
    return pd.DataFrame(out)


@pytest.mark.parametrize("spec, selectors", [
    ({"kind": "val-size", "severities": [25]}, ("greedy", "ip-gap", "safe", "blind")),
    ({"kind": "label-shift", "replace": True, "severities": [0.2], "group": "A"}, ("ip-utility", "greedy")),
    ({"kind": "test-group-mix", "severities": [0.6]}, ("greedy", "blind")),
])
def test_engine_equals_a_plain_loop(spec, selectors):
    data = synthetic()
    (scenario,) = make_scenarios(spec, "test")
    settings = StressSettings(repeats=70, seed=3, tolerance=0.0, selectors=selectors)
    table, skipped = run_scenarios(data, [scenario], settings)
    assert skipped == []
    for selector in selectors:
        row = table[table["strategy"] == selector].iloc[0]
        ref = naive(data, scenario, 0, settings, selector)
        assert row["repeats"] == len(ref) == 70
        assert row["harm_rate"] == pytest.approx(ref["harmed"].mean())
        assert row["max_harm"] == pytest.approx(ref["harm"].max())
        assert row["mean_harm"] == pytest.approx(ref["harm"].mean())
        assert row["gap"] == pytest.approx(ref["gap"].mean())
        assert row["worst_group"] == pytest.approx(ref["worst"].mean())
        assert row["changed_rate"] == pytest.approx(ref["changed"].mean())
        assert row["harm_rate_low"] <= row["harm_rate"] <= row["harm_rate_high"]


def test_safe_harms_less_than_greedy_when_validation_is_small():
    data = synthetic(n=6000)
    scenarios = make_scenarios({"kind": "val-size", "severities": [40]}, "test")
    table, _ = run_scenarios(data, scenarios, StressSettings(repeats=300, tolerance=0.0, selectors=("greedy", "safe")))
    rate = table.set_index("strategy")["harm_rate"]
    assert rate["safe"] < rate["greedy"]


def test_blind_routing_accuracy_is_the_share_routed_to_the_true_group():
    data = synthetic()
    scenarios = make_scenarios({"kind": "val-size", "severities": [10000]}, "test")  # nothing changes
    table, _ = run_scenarios(data, scenarios, StressSettings(repeats=5, selectors=("blind",)))
    assert table["repeats"].tolist() == [1]  # deterministic: one repeat
    assert table["routing_accuracy"].iloc[0] == pytest.approx((data.test.pred_group == data.test.group).mean())


def test_runs_are_reproducible_from_the_seed():
    data = synthetic()
    scenarios = make_scenarios({"kind": "val-group-fraction", "severities": [0.2], "replace": True}, "test")
    run = lambda seed, r: run_scenarios(data, scenarios, StressSettings(repeats=r, seed=seed, tolerance=0.0,
                                                                        selectors=("greedy",)))[0]
    a, b, c = run(1, 150), run(1, 150), run(2, 150)
    assert list(a.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(a, b)
    assert a["gap"].iloc[0] != c["gap"].iloc[0]



def test_blind_and_rescoring_scenarios_are_skipped_with_reasons():
    data = synthetic(routing=False)
    scenarios = make_scenarios({"kind": "corruption", "corruptions": ["noise"]}, "test") + \
        make_scenarios({"kind": "val-size", "severities": [50]}, "test")
    table, skipped = run_scenarios(data, scenarios, StressSettings(repeats=10, selectors=("greedy", "blind")))
    assert skipped == ["selectors blind: no blind routing data for this run",
                       "scenario corruption-noise: re-scoring needs the stored models (model.pt) and the dataset"]
    assert set(table["scenario"]) == {"val-size"} and set(table["strategy"]) == {"greedy"}


@pytest.mark.parametrize("settings, message", [
    (StressSettings(repeats=0), "repeats must be a positive integer"),
    (StressSettings(tolerance=-0.1), r"tolerance is an accuracy drop in \[0, 1\)"),
    (StressSettings(delta=0.6), r"delta \(the level of `safe`\) must be in \(0, 0.5\)"),
    (StressSettings(selectors=("greedy", "oracle")), "unknown selector 'oracle'"),
    (StressSettings(selectors=("blind:best",)), "unknown selector 'blind:best'"),
])
def test_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        run_scenarios(synthetic(n=300), make_scenarios({"kind": "val-size"}, "t"), settings)
