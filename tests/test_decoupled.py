"""Decoupled experts: per-group heads routed by the true group; per-group models that never see other groups."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noharm.datasets.base import DatasetError
from noharm.methods import FitContext, get_method
from noharm.methods.batches import Batch
from noharm.methods.decoupled import GroupHeads, per_group_cross_entropy, route
from noharm.methods.group_models import GroupModels, PriorModel
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 32, "batch_size": 32, "epochs": 2}


def accuracy_objective(task):
    val = task.indices("val")
    return lambda proba: float((proba.argmax(1) == task.y[val]).mean())


def test_route_picks_each_samples_own_head():
    logits = torch.arange(4 * 3 * 2, dtype=torch.float32).view(4, 3, 2)
    group = torch.tensor([2, 0, 1, 2])
    out = route(logits, group)
    assert out.shape == (4, 2)
    for i in range(4):
        assert torch.equal(out[i], logits[i, group[i]])


def test_group_heads_are_independent_linear_layers():
    heads = GroupHeads(in_dim=5, n_groups=3, num_classes=2)
    f = torch.randn(4, 5)
    out = heads(f)
    assert out.shape == (4, 3, 2)
    for g in range(3):
        torch.testing.assert_close(out[:, g], F.linear(f, heads.weight[g], heads.bias[g]))


def test_per_group_cross_entropy_by_hand():
    logits = torch.tensor([
        [[2.0, 0.0], [0.0, 0.0]],
        [[0.0, 1.0], [5.0, 0.0]],
        [[0.0, 0.0], [1.0, 3.0]],
    ])
    y = torch.tensor([0, 1, 1])
    group = torch.tensor([0, 0, 1])

    def ce(z, k):
        return -torch.log_softmax(z, 0)[k]

    # Group 0: mean of two samples through head 0; group 1: one sample through head 1.
    expected = (ce(logits[0, 0], 0) + ce(logits[1, 0], 1)) / 2 + ce(logits[2, 1], 1)
    torch.testing.assert_close(per_group_cross_entropy(logits, y, group), expected)


def test_a_head_gets_no_gradient_from_other_groups():
    heads = GroupHeads(in_dim=4, n_groups=3, num_classes=2)
    f = torch.randn(6, 4)
    group = torch.tensor([0, 0, 1, 1, 0, 1])  # no sample of group 2
    per_group_cross_entropy(heads(f), torch.randint(0, 2, (6,)), group).backward()
    assert heads.weight.grad[2].abs().sum() == 0 and heads.bias.grad[2].abs().sum() == 0
    assert heads.weight.grad[0].abs().sum() > 0 and heads.weight.grad[1].abs().sum() > 0


def test_decoupled_predictions_are_routed_by_the_true_group():
    task = make_task(n=200)
    method = get_method("decoupled")(FAST)
    pred = method.fit(task, FitContext(objective=accuracy_objective(task)))
    assert pred.candidates == ("experts",) and method.expert_candidate == "experts"
    idx = task.indices("test")
    out = pred.predict_proba(task, idx)["experts"]
    model = pred.model.eval()
    with torch.no_grad():
        all_heads = torch.softmax(model(torch.from_numpy(task.x[idx])), dim=2).numpy()
    np.testing.assert_allclose(out, all_heads[np.arange(len(idx)), task.group[idx]], rtol=1e-5, atol=1e-6)
    # The same rows declared as the other group get the other head.
    x, g = torch.from_numpy(task.x[idx]), torch.from_numpy(task.group[idx])
    batch = Batch(x=x, y=torch.from_numpy(task.y[idx]), group=1 - g, index=torch.from_numpy(idx))
    with torch.no_grad():
        flipped = torch.softmax(method.infer(model, batch)["experts"], dim=1).numpy()
    np.testing.assert_allclose(flipped, all_heads[np.arange(len(idx)), 1 - task.group[idx]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, flipped)


def test_experts_fit_group_specific_labels_that_erm_cannot():
    # make_task flips the label's direction with the group: one pooled linear rule cannot fit both.
    task = make_task(n=600, seed=1)
    hp = {**FAST, "epochs": 15, "lr": 1e-2}
    test = task.indices("test")
    acc = {}
    for name in ("erm", "decoupled", "group-models"):
        method = get_method(name)(hp)
        proba = method.fit(task, FitContext(objective=accuracy_objective(task))).predict_proba(task, test)
        acc[name] = float((proba[method.candidates[0]].argmax(1) == task.y[test]).mean())
    assert acc["decoupled"] > acc["erm"] + 0.1, acc
    assert acc["group-models"] > acc["erm"] + 0.1, acc


def test_decoupled_is_deterministic():
    task = make_task(n=160)
    runs = [get_method("decoupled")(FAST).fit(task, FitContext(seed=3)).predict_proba(task, np.arange(160))["experts"]
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


class Recording(GroupModels):
    """Group models that log which rows each training run draws."""

    def setup(self, task, ctx):
        self.runs = getattr(self, "runs", []) + [[]]

    def training_loss(self, model, batch):
        self.runs[-1].append(batch.index.cpu().numpy())
        return super().training_loss(model, batch)


def test_group_models_never_see_another_groups_rows(monkeypatch):
    task = make_task(n=300, n_groups=3)
    import noharm.methods.group_models as gm

    scored: list[int] = []
    make = gm.group_objective

    def recording_objective(name, y):
        score = make(name, y)

        def wrapped(proba):
            scored.append(len(proba))
            return score(proba)
        return wrapped

    monkeypatch.setattr(gm, "group_objective", recording_objective)
    method = Recording({**FAST, "epochs": 2})
    pred = method.fit(task, FitContext(objective=accuracy_objective(task)))
    assert len(method.runs) == 3
    train = task.split == "train"
    for g, batches in enumerate(method.runs):
        seen = np.concatenate(batches)
        assert (task.group[seen] == g).all() and train[seen].all()
        # Two epochs over exactly the group's training rows (at most one row dropped per epoch for BatchNorm).
        own = np.flatnonzero(train & (task.group == g))
        assert set(seen) <= set(own) and len(seen) >= 2 * (len(own) - 1)
    # Each group's best epoch is picked on its own validation rows only.
    val_sizes = [int(((task.split == "val") & (task.group == g)).sum()) for g in range(3)]
    assert scored == [n for n in val_sizes for _ in range(2)]
    assert {f"best_epoch/group:g{g}" for g in range(3)} <= set(pred.stats)


def test_group_models_route_rows_to_their_groups_model():
    task = make_task(n=200)
    pred = get_method("group-models")(FAST).fit(task, FitContext())
    idx = np.arange(200)
    out = pred.predict_proba(task, idx)["experts"]
    x = torch.from_numpy(task.x)
    for g, model in enumerate(pred.models):
        model.eval()
        with torch.no_grad():
            own = torch.softmax(model(x), dim=1).numpy()
        rows = task.group == g
        np.testing.assert_allclose(out[rows], own[rows], rtol=1e-5, atol=1e-6)
    # The two models differ, so routing matters.
    assert not np.allclose(pred.models[0](x).detach(), pred.models[1](x).detach())
    assert set(pred.state_dict()) >= {"group0.head.weight", "group1.head.weight"}


def test_group_models_one_class_group_uses_label_frequencies():
    task = make_task(n=200)
    y = task.y.copy()
    y[(task.group == 1) & (task.split == "train")] = 1
    task = replace(task, y=y)
    pred = get_method("group-models")(FAST).fit(task, FitContext())
    assert isinstance(pred.models[1], PriorModel)
    n1 = int(((task.group == 1) & (task.split == "train")).sum())
    rows = np.flatnonzero(task.group == 1)
    out = pred.predict_proba(task, rows)["experts"]
    np.testing.assert_allclose(out, np.tile([1 / (n1 + 2), (n1 + 1) / (n1 + 2)], (len(rows), 1)), rtol=1e-5)


def test_group_models_refuse_a_group_with_one_training_row():
    task = make_task(n=200)
    split = task.split.copy()
    ones = np.flatnonzero((task.group == 1) & (split == "train"))
    split[ones[1:]] = "val"
    with pytest.raises(DatasetError, match="group-models: group 'g1' has 1 training row"):
        get_method("group-models")(FAST).fit(replace(task, split=split), FitContext())


@pytest.mark.parametrize("name", ["decoupled", "group-models"])
def test_image_experts_train_with_cnn(name):
    task = make_task("image", n=120)
    method = get_method(name)({"backbone": "cnn", "batch_size": 16, "epochs": 2})
    out = method.fit(task, FitContext(objective=accuracy_objective(task))).predict_proba(task, task.indices("test"))
    proba = out["experts"]
    assert proba.shape == (len(task.indices("test")), 2)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)


def test_group_models_predictor_refuses_a_task_with_other_groups():
    pred = get_method("group-models")(FAST).fit(make_task(n=120), FitContext())
    with pytest.raises(ValueError, match="task has 3 groups but 2 group models were trained"):
        pred.predict_proba(make_task(n=120, n_groups=3), np.arange(10))
