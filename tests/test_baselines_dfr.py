"""DFR: stage 2 changes only the last layer, trained on group-balanced draws from the first half of validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.base import DatasetError
from methods import FitContext, get_method
from methods.dfr import C_GRID, l1_logistic_regression, linear_to_logits, split_validation
from methods.training import train
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1, "repeats": 3}


def skewed_task(seed: int = 0):
    """Group 1 is a minority (about 25%), so balancing has something to do."""
    task = make_task(n=800, seed=seed)
    task.group = (np.random.default_rng(seed).random(len(task.y)) < 0.25).astype(np.int64)
    return task


def stage_one(task, hp, seed=0):
    method = get_method("dfr")({**FAST, **hp})
    ctx = FitContext(seed=seed)
    return method, train(method, task, ctx), ctx


def test_validation_halves():
    task = skewed_task()
    first, second = split_validation(task, seed=3)
    val = task.indices("val")
    assert len(np.intersect1d(first, second)) == 0
    assert np.array_equal(np.sort(np.concatenate([first, second])), val)
    assert abs(len(first) - len(second)) <= 1
    again, _ = split_validation(task, seed=3)
    other, _ = split_validation(task, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_only_the_last_layer_changes():
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {})
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    method.retrain_last_layer(predictor, task, ctx)
    after = predictor.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"last.weight", "last.bias", "retrained"}
    # The candidates now differ: `model` is the retrained layer, `base` stage 1's head.
    out = predictor.predict_proba(task, task.indices("test"))
    assert not np.allclose(out["model"], out["base"])


@pytest.mark.parametrize("balance", ["group", "group_label"])
def test_draws_are_balanced_and_come_from_the_first_half_only(balance):
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {"balance": balance})
    method.retrain_last_layer(predictor, task, ctx)
    first, second = split_validation(task, ctx.seed)
    assert len(method.retrain_rows) == 3
    for rows in method.retrain_rows:
        assert np.isin(rows, first).all() and not np.isin(rows, second).any()
        assert len(np.unique(rows)) == len(rows)
        cells = task.group[rows] if balance == "group" else task.group[rows] * 2 + task.y[rows]
        counts = np.bincount(cells)
        assert len(set(counts[counts > 0])) == 1  # every cell the same size
    # The draw differs from the raw (skewed) first half.
    assert np.bincount(task.group[first])[1] < np.bincount(task.group[first])[0]


def test_second_half_never_trains_the_layer():
    """With C fixed, relabelling the second half (or the test split) leaves the retrained layer unchanged."""
    weights = []
    for flip in (False, True):
        task = skewed_task()
        _, second = split_validation(task, 0)
        if flip:
            task.y[second] = 1 - task.y[second]
            task.y[task.indices("test")] = 1 - task.y[task.indices("test")]
        method, predictor, ctx = stage_one(task, {"tune_C": False, "l1_C": 0.3})
        method.retrain_last_layer(predictor, task, ctx)
        weights.append(predictor.model.last.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_retrained_layer_realises_the_logistic_regression():
    """One draw, fixed C: the layer's logits equal scikit-learn's decision function on the standardised features."""
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {"tune_C": False, "l1_C": 0.5, "repeats": 1})
    method.retrain_last_layer(predictor, task, ctx)
    first, _ = split_validation(task, ctx.seed)
    feats_first = method.features(predictor, first)
    mean, std = feats_first.mean(0), feats_first.std(0)
    std[std == 0] = 1.0
    rows = method.retrain_rows[0]
    clf = l1_logistic_regression(0.5, ctx.seed).fit((method.features(predictor, rows) - mean) / std, task.y[rows])
    test = task.indices("test")
    feats = method.features(predictor, test)
    logits = predictor.model.last(torch.from_numpy(feats)).detach().numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], clf.decision_function((feats - mean) / std), rtol=1e-4, atol=1e-4)
    assert method.chosen_C == 0.5


def test_c_is_tuned_on_the_grid():
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {"repeats": 1})
    method.retrain_last_layer(predictor, task, ctx)
    assert method.chosen_C in C_GRID and predictor.stats["dfr_C"] == method.chosen_C


def test_binary_layer_softmax_is_the_sigmoid():
    w, b = linear_to_logits(np.array([[2.0, -1.0]]), np.array([0.5]), 2)
    x = np.array([0.3, 0.7])
    z = w @ x + b
    p1 = np.exp(z[1]) / np.exp(z).sum()
    assert p1 == pytest.approx(1 / (1 + np.exp(-(2.0 * 0.3 - 0.7 + 0.5))))


def test_empty_validation_is_refused():
    task = make_task(n=100)
    task.split[task.split == "val"] = "train"
    with pytest.raises(DatasetError, match="val split has fewer than two"):
        get_method("dfr")(FAST).fit(task, FitContext())


def test_single_class_validation_is_refused():
    task = skewed_task()
    task.y[task.indices("val")] = 1
    with pytest.raises(DatasetError, match="single class"):
        get_method("dfr")({**FAST, "tune_C": False}).fit(task, FitContext())
