"""GapReg: the penalty is the gap between the groups' mean losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods import FitContext, get_method
from methods.batches import BatchSource
from methods.gapreg import loss_gap
from tests.conftest import make_task


def test_gap_by_hand():
    losses = torch.tensor([0.2, 0.4, 1.0, 2.0, 0.9])
    group = torch.tensor([0, 0, 1, 1, 3])  # group 2 absent
    # Means: 0.3, 1.5, -, 0.9 -> gap 1.5 - 0.3.
    assert float(loss_gap(losses, group, 4)) == pytest.approx(1.2)
    assert float(loss_gap(torch.tensor([0.5, 3.0]), torch.tensor([1, 1]), 2)) == 0.0  # one group: no gap
    two = loss_gap(torch.tensor([0.1, 0.7, 0.6]), torch.tensor([1, 0, 1]), 2)
    assert float(two) == pytest.approx(abs(0.7 - 0.35))


def test_gap_gradient_moves_only_the_extreme_groups():
    losses = torch.tensor([0.2, 0.4, 1.0, 2.0, 0.9], requires_grad=True)
    loss_gap(losses, torch.tensor([0, 0, 1, 1, 2]), 3).backward()
    np.testing.assert_allclose(losses.grad.numpy(), [-0.5, -0.5, 0.5, 0.5, 0.0])


def test_training_loss_is_cross_entropy_plus_weighted_gap():
    task = make_task(n=80, n_groups=3)
    method = get_method("gapreg")({"backbone": "mlp", "hidden": 16, "gap_weight": 0.7})
    method.setup(task, FitContext())
    torch.manual_seed(0)
    model = method.build_model(task).eval()
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(80))
    with torch.no_grad():
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none").numpy()
        got = float(method.training_loss(model, batch))
    means = [ce[task.group == g].mean() for g in range(3)]
    assert got == pytest.approx(ce.mean() + 0.7 * (max(means) - min(means)), rel=1e-5)
