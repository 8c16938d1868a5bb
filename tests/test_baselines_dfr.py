"""DFR: stage 2 changes only the last layer: C tuned on validation halves, then averaged balanced refits on all of validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noharm.datasets.base import DatasetError
from noharm.methods import FitContext, get_method
from noharm.methods.base import TaskData
from noharm.methods.dfr import C_GRID, balanced_subset, l1_logistic_regression, split_validation
from noharm.methods.linear_layer import linear_to_logits
from noharm.methods.training import train
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


def test_defaults_are_the_references():
    method = get_method("dfr")()
    assert method.hp["repeats"] == 20  # num_retrains=20 in dfr_on_validation_eval
    assert method.hp["balance"] == "group_label"  # DFR's groups: label x spurious attribute


@pytest.mark.parametrize("balance", ["group", "group_label"])
def test_draws_are_balanced_and_come_from_the_whole_validation_set(balance):
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {"balance": balance})
    method.retrain_last_layer(predictor, task, ctx)
    first, second = split_validation(task, ctx.seed)
    assert len(method.retrain_rows) == 3
    for rows in method.retrain_rows:
        assert np.isin(rows, task.indices("val")).all()
        assert len(np.unique(rows)) == len(rows)
        cells = task.group[rows] if balance == "group" else task.group[rows] * 2 + task.y[rows]
        counts = np.bincount(cells)
        assert len(set(counts[counts > 0])) == 1  # every cell the same size
    drawn = np.concatenate(method.retrain_rows)
    assert np.isin(drawn, first).any() and np.isin(drawn, second).any()  # both halves refit the layer
    # The draw differs from the raw (skewed) validation set.
    assert np.bincount(task.group[task.indices("val")])[1] < np.bincount(task.group[task.indices("val")])[0]


def reference_refit(train_x, draws_x, draws_y, C):
    """dfr_on_validation_eval written out: scaler fitted on the train features, one L1 liblinear fit per
    balanced draw, coefficients and intercepts averaged; returns the averaged decision function."""
    mean, std = train_x.mean(0), train_x.std(0)
    std[std == 0] = 1.0
    coefs, intercepts = [], []
    for x, y in zip(draws_x, draws_y):
        clf = l1_logistic_regression(C, 0).fit((x - mean) / std, y)
        coefs.append(clf.coef_)
        intercepts.append(clf.intercept_)
    coef, intercept = np.mean(coefs, axis=0), np.mean(intercepts, axis=0)
    return lambda x: ((x - mean) / std) @ coef[0] + intercept[0]


def test_retrained_layer_is_the_average_of_the_references_refits():
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {"tune_C": False, "l1_C": 0.5, "repeats": 4})
    method.retrain_last_layer(predictor, task, ctx)
    rows = method.retrain_rows
    decision = reference_refit(method.features(predictor, task.indices("train")),
                               [method.features(predictor, r) for r in rows], [task.y[r] for r in rows], 0.5)
    test = task.indices("test")
    feats = method.features(predictor, test)
    logits = predictor.model.last(torch.from_numpy(feats)).detach().numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], decision(feats), rtol=1e-4, atol=1e-4)
    assert method.chosen_C == 0.5


def test_c_is_the_references_choice_on_the_halves():
    """dfr_on_validation_tune written out: one balanced draw of one half, scaled on itself, one fit per C,
    the first C with the best worst-group accuracy on the other half."""
    task = skewed_task()
    method, predictor, ctx = stage_one(task, {"repeats": 1})
    method.retrain_last_layer(predictor, task, ctx)
    first, second = split_validation(task, ctx.seed)
    cells = lambda rows: task.group[rows] * 2 + task.y[rows]  # noqa: E731
    rows = balanced_subset(first, cells(first), np.random.default_rng(ctx.seed))
    x = method.features(predictor, rows)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    x_eval = (method.features(predictor, second) - mean) / std
    worst = []
    for C in C_GRID:
        pred = l1_logistic_regression(C, 0).fit((x - mean) / std, task.y[rows]).predict(x_eval)
        c = cells(second)
        worst.append(min((pred[c == k] == task.y[second][c == k]).mean() for k in np.unique(c)))
    assert method.chosen_C == C_GRID[int(np.argmax(worst))]
    assert predictor.stats["dfr_C"] == method.chosen_C


def test_multiclass_target():
    """Three classes (the label is the largest of three features): one-vs-rest layers, every class predicted."""
    rng = np.random.default_rng(0)
    task = make_task(n=900, num_classes=3)
    task.x = rng.normal(size=task.x.shape).astype(np.float32)
    task.y = np.argmax(task.x[:, :3] + 0.3 * rng.normal(size=(900, 3)), axis=1)
    predictor = get_method("dfr")({**FAST, "epochs": 3}).fit(task, FitContext(seed=0))
    test = task.indices("test")
    proba = predictor.predict_proba(task, test)["model"]
    assert proba.shape == (len(test), 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert predictor.model.last.weight.shape[0] == 3
    assert (proba.argmax(1) == task.y[test]).mean() > 0.6  # chance is 1/3
    assert len(np.unique(proba.argmax(1))) == 3


def spurious_task(seed: int = 0) -> TaskData:
    """Train: the attribute a (a clean feature) agrees with y in 95% of rows; val and test: a independent of y.

    The core feature predicts y everywhere but is noisier, so ERM leans on a and fails the y != a groups.
    """
    rng = np.random.default_rng(seed)
    n_train, n_val, n_test = 2000, 1000, 1000
    n = n_train + n_val + n_test
    y = rng.integers(0, 2, n)
    agree = np.concatenate([rng.random(n_train) < 0.95, rng.random(n - n_train) < 0.5])
    a = np.where(agree, y, 1 - y)
    x = np.stack([(2 * y - 1) + 1.0 * rng.normal(size=n), (2 * a - 1) + 0.1 * rng.normal(size=n),
                  rng.normal(size=n)], 1).astype(np.float32)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    return TaskData(x=x, y=y.astype(np.int64), group=a.astype(np.int64), split=split, n_groups=2,
                    group_names=("a0", "a1"), num_classes=2, kind="tabular")


def test_improves_worst_group_accuracy_on_a_spurious_feature():
    task = spurious_task()
    predictor = get_method("dfr")({"backbone": "mlp", "hidden": 32, "batch_size": 64, "epochs": 5, "lr": 3e-3,
                                   "repeats": 5}).fit(task, FitContext(seed=0))
    test = task.indices("test")
    out = predictor.predict_proba(task, test)
    cell = task.group[test] * 2 + task.y[test]

    def worst(proba):
        right = proba.argmax(1) == task.y[test]
        return min(right[cell == k].mean() for k in range(4))

    assert worst(out["base"]) < 0.6  # ERM follows the spurious attribute
    assert worst(out["model"]) > worst(out["base"]) + 0.15


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
