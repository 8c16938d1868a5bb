"""Group DRO: the exponentiated-gradient weights move toward the group with the higher loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noharm.methods import FitContext, get_method
from noharm.methods.batches import BatchSource
from noharm.methods.groupdro import group_mean_losses, update_group_weights
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1}


def test_update_by_hand():
    q = torch.tensor([0.5, 0.5])
    new = update_group_weights(q, torch.tensor([1.0, 2.0]), eta=0.1)
    expected = np.exp([0.1, 0.2]) / np.exp([0.1, 0.2]).sum()
    np.testing.assert_allclose(new.numpy(), expected, rtol=1e-6)
    assert new[1] > new[0] and torch.isclose(new.sum(), torch.tensor(1.0))


def test_repeated_updates_concentrate_on_the_worst_group():
    q = torch.full((3,), 1 / 3)
    losses = torch.tensor([0.2, 0.9, 0.5])
    for _ in range(200):
        q = update_group_weights(q, losses, eta=0.1)
    assert int(q.argmax()) == 1 and q[1] > 0.99
    # Equal losses leave the weights where they are.
    same = update_group_weights(torch.tensor([0.2, 0.3, 0.5]), torch.full((3,), 0.7), eta=1.0)
    np.testing.assert_allclose(same.numpy(), [0.2, 0.3, 0.5], rtol=1e-6)


def test_huge_losses_do_not_overflow():
    q = update_group_weights(torch.tensor([0.5, 0.5]), torch.tensor([1e4, 0.0]), eta=1.0)
    assert torch.isfinite(q).all() and q[0] > 0.999


def test_group_mean_losses_skip_absent_groups():
    means, present = group_mean_losses(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2]), 3)
    np.testing.assert_allclose(means.numpy(), [2.0, 0.0, 5.0])
    assert present.tolist() == [True, False, True]


def hard_group_task():
    """Group 1's labels are coin flips: its loss stays higher than group 0's."""
    task = make_task(n=600, seed=1)
    rng = np.random.default_rng(0)
    hard = task.group == 1
    task.y[hard] = rng.integers(0, 2, hard.sum())
    task.x[~hard, 0] = np.where(task.y[~hard] == 1, 2.0, -2.0)  # group 0 is easy
    return task


def test_one_step_raises_the_harder_groups_weight():
    task = hard_group_task()
    method = get_method("groupdro")({**FAST, "eta": 0.5})
    ctx = FitContext(seed=0)
    method.setup(task, ctx)
    model = method.build_model(task)
    for _ in range(5):  # a few steps of the model so the easy group's loss drops
        batch = BatchSource(task, ctx.device).batch(task.indices("train"))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        opt.zero_grad()
        method.training_loss(model, batch).backward()
        opt.step()
    assert method.q[1] > method.q[0]


def test_training_ends_with_the_harder_group_up_weighted():
    task = hard_group_task()
    method = get_method("groupdro")({**FAST, "epochs": 3, "eta": 0.1, "lr": 1e-2})
    method.fit(task, FitContext(seed=0))
    assert method.q[1] > 0.55 and torch.isclose(method.q.sum(), torch.tensor(1.0))


def test_adjustment_favours_the_smaller_group_at_equal_loss():
    task = make_task(n=400)
    task.group[:] = 0
    task.group[:40] = 1  # a small group
    method = get_method("groupdro")({**FAST, "adjustment": 2.0, "eta": 0.1})
    method.setup(task, FitContext())
    n = np.bincount(task.group[task.indices("train")], minlength=2)
    np.testing.assert_allclose(method.adjust.numpy(), 2.0 / np.sqrt(n), rtol=1e-6)
    assert method.adjust[1] > method.adjust[0]


def test_bad_eta_is_refused():
    from noharm.methods.hparams import HparamError

    with pytest.raises(HparamError, match="eta"):
        get_method("groupdro")({"eta": "fast"})


def test_label_x_attribute_groups_follow_the_reference_update():
    """groups=group_label: one weight per (group, label) cell, updated as Sagawa et al.'s LossComputer does:
    per-cell mean loss (0 for an absent cell), q <- q * exp(eta * loss), q <- q / sum q, loss = sum q * cell loss."""
    task = make_task(n=200)
    method = get_method("groupdro")({**FAST, "groups": "group_label", "eta": 0.3})
    method.setup(task, FitContext())
    assert method.q.shape == (4,)
    torch.manual_seed(0)
    model = method.build_model(task).eval()
    rows = task.indices("train")[:40]
    batch = BatchSource(task, torch.device("cpu")).batch(rows)
    with torch.no_grad():
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none").numpy()
        got = float(method.training_loss(model, batch))
    cell = task.group[rows] * 2 + task.y[rows]
    cell_loss = np.array([ce[cell == c].mean() if (cell == c).any() else 0.0 for c in range(4)])
    q = np.full(4, 0.25) * np.exp(0.3 * cell_loss)
    q /= q.sum()
    np.testing.assert_allclose(method.q.numpy(), q, rtol=1e-5)
    assert got == pytest.approx(float(q @ cell_loss), rel=1e-5)
