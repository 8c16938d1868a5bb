"""group-threshold: chosen thresholds are the brute-force optimum on validation; test rows never matter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from noharm.datasets.base import DatasetError
from noharm.methods import FitContext, get_method
from noharm.methods.group_threshold import (candidate_thresholds, choose_thresholds, coordinate_offsets,
                                     multiclass_objective)
from noharm.methods.hparams import HparamError
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1}


def hand_made(n_groups: int, per_group: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(n_groups), per_group)
    y = rng.integers(0, 2, len(group))
    scores = np.round(rng.normal(size=len(group)) + 0.8 * y + 0.5 * group, 2)  # ties on purpose
    return scores, y, group


def objective_value(scores, y, group, thresholds, objective):
    pred = scores > thresholds[group]
    if objective == "acc":
        return (pred == y).mean()
    bal = []
    for g in np.unique(group):
        m = group == g
        recalls = [(pred[m & (y == k)] == k).mean() for k in (0, 1) if (m & (y == k)).any()]
        bal.append(np.mean(recalls))
    return np.mean(bal)


def rate_spread(scores, y, group, thresholds, constraint):
    pred = scores > thresholds[group]
    rates = []
    for g in np.unique(group):
        m = (group == g) & ((y == 1) if constraint == "eopp" else True)
        if m.any():
            rates.append(pred[m].mean())
    return max(rates) - min(rates)


def brute_force(scores, y, group, objective, constraint, tolerance):
    """Best objective over every combination of per-group candidate thresholds."""
    groups = np.unique(group)
    grids = [candidate_thresholds(scores[group == g]) for g in groups]
    best = -np.inf
    for combo in itertools.product(*grids):
        t = np.array(combo)
        if constraint != "none" and rate_spread(scores, y, group, t, constraint) > tolerance + 1e-12:
            continue
        best = max(best, objective_value(scores, y, group, t, objective))
    return best


@pytest.mark.parametrize("objective", ["acc", "bal_acc"])
@pytest.mark.parametrize("constraint,tolerance,n_groups", [
    ("none", 0.0, 3), ("dp", 0.0, 2), ("dp", 0.15, 2), ("eopp", 0.1, 2), ("dp", 0.2, 3), ("eopp", 0.25, 3),
])
def test_thresholds_match_brute_force(objective, constraint, tolerance, n_groups):
    scores, y, group = hand_made(n_groups, per_group=7 if n_groups == 2 else 5, seed=n_groups)
    thresholds, value = choose_thresholds(scores, y, group, n_groups, objective, constraint, tolerance)
    achieved = objective_value(scores, y, group, thresholds, objective)
    assert value == pytest.approx(achieved)
    assert achieved == pytest.approx(brute_force(scores, y, group, objective, constraint, tolerance))
    if constraint != "none":
        assert rate_spread(scores, y, group, thresholds, constraint) <= tolerance + 1e-12


def test_candidates_separate_every_distinct_score():
    c = candidate_thresholds(np.array([0.2, 0.5, 0.5, 0.9]))
    np.testing.assert_allclose(c, [-0.8, 0.35, 0.7, 1.9])


def test_offsets_realise_the_thresholds_through_argmax():
    method = get_method("group-threshold")({"objective": "acc"})
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(60, 2))
    group = rng.integers(0, 3, 60)
    y = (logits[:, 1] - logits[:, 0] + rng.normal(size=60) + group > 0.5).astype(int)
    offsets = method.choose_offsets(logits, y, group, 3)
    pred = np.argmax(logits + offsets[group], axis=1)
    assert np.array_equal(pred, (logits[:, 1] - logits[:, 0] > method.thresholds[group]).astype(int))
    raw_acc = (np.argmax(logits, 1) == y).mean()
    assert (pred == y).mean() >= raw_acc and (pred == y).mean() == pytest.approx(method.value)


@pytest.mark.parametrize("objective", ["acc", "bal_acc"])
def test_multiclass_offsets_are_coordinatewise_optimal(objective):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 1.2 * np.eye(3)[y]
    logits[:, 2] -= 1.5  # class 2 under-predicted: an offset can fix it
    b = coordinate_offsets(logits, y, objective, rounds=5)
    best = multiclass_objective(np.argmax(logits + b, 1), y, objective)
    assert best > multiclass_objective(np.argmax(logits, 1), y, objective)
    assert b[0] == 0.0 and b[2] > 0
    for c in (1, 2):  # no single offset on a fine grid does better
        for v in np.linspace(-5, 5, 401):
            trial = b.copy()
            trial[c] = v
            assert multiclass_objective(np.argmax(logits + trial, 1), y, objective) <= best + 1e-9


def test_test_rows_never_influence_the_choice():
    offsets, calls = [], []
    for flip in (False, True):
        task = make_task(n=300)
        if flip:  # anything about test rows may change
            test = task.indices("test")
            task.y[test] = 1 - task.y[test]
            task.x[test] = -task.x[test] * 10
        method = get_method("group-threshold")(FAST)
        original = method.raw_logits
        method.raw_logits = lambda predictor, rows, _o=original: calls.append(rows) or _o(predictor, rows)
        predictor = method.fit(task, FitContext(seed=0))
        offsets.append(predictor.model.offsets.clone())
        assert np.array_equal(calls[-1], task.indices("val"))
    assert torch.equal(offsets[0], offsets[1])
    assert len(calls) == 2


def test_raw_candidate_is_the_unshifted_model():
    task = make_task(n=300)
    predictor = get_method("group-threshold")(FAST).fit(task, FitContext(seed=0))
    out = predictor.predict_proba(task, task.indices("test"))
    offsets = predictor.model.offsets.numpy()
    shifted = np.log(out["raw"]) + offsets[task.group[task.indices("test")]]
    expected = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    np.testing.assert_allclose(out["model"], expected, rtol=1e-4, atol=1e-6)


def test_multiclass_task_fits_and_bad_settings_are_refused():
    task = make_task(n=300, num_classes=3)
    predictor = get_method("group-threshold")(FAST).fit(task, FitContext(seed=0))
    assert predictor.model.offsets.shape == (2, 3)
    with pytest.raises(HparamError, match="needs a binary label"):
        get_method("group-threshold")({**FAST, "constraint": "dp"}).fit(task, FitContext())
    with pytest.raises(HparamError, match="objective"):
        get_method("group-threshold")({"objective": "f1"})
    with pytest.raises(HparamError, match="constraint must be one of"):
        choose_thresholds(np.zeros(2), np.zeros(2), np.zeros(2, int), 1, "acc", "eodds")
    empty_val = make_task(n=100)
    empty_val.split[empty_val.split == "val"] = "train"
    with pytest.raises(DatasetError, match="val split is empty"):
        get_method("group-threshold")(FAST).fit(empty_val, FitContext())


def test_the_constraint_costs_accuracy_when_it_binds():
    scores, y, group = hand_made(2, seed=2)
    free = choose_thresholds(scores, y, group, 2, "acc")[1]
    parity = choose_thresholds(scores, y, group, 2, "acc", "dp", 0.0)[1]
    assert parity < free
