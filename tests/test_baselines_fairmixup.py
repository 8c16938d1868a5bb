"""Fair Mixup: pairs run across groups; the path penalty is the exact derivative, zero only for outputs flat along the path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from noharm.methods import FitContext, get_method
from noharm.methods.batches import BatchSource
from noharm.methods.fairmixup import cross_group_pairs, mixup_penalty, mixup_penalty_features
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1}


def value(t: torch.Tensor) -> float:
    return float(t.detach())


def test_pairs_mix_across_groups():
    group = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    left, right, set_id = cross_group_pairs(group)
    assert len(left) > 0 and (group[left] != group[right]).all()
    # One pair set per pair of groups present; m = the smaller group's count.
    pairs = {(int(group[a]), int(group[b])) for a, b in zip(left, right)}
    assert pairs == {(0, 1), (0, 2), (1, 2)}
    assert torch.bincount(set_id).tolist() == [2, 3, 2]


def test_eo_pairs_share_the_label():
    group = torch.tensor([0, 1, 0, 1, 0, 1])
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    left, right, set_id = cross_group_pairs(group, y)
    assert (y[left] == y[right]).all() and (group[left] != group[right]).all()
    assert torch.bincount(set_id).tolist() == [1, 1]  # per label: one row of one group, two of the other
    empty = cross_group_pairs(torch.tensor([1, 1, 1]))
    assert all(len(t) == 0 for t in empty)


def test_penalty_is_zero_for_an_output_constant_along_the_path():
    torch.manual_seed(0)
    x_a, x_b = torch.randn(5, 4), torch.randn(5, 4)
    set_id = torch.zeros(5, dtype=torch.long)
    const = nn.Parameter(torch.tensor([0.3, -0.2]))
    flat = lambda x: torch.softmax(const.expand(len(x), 2) + 0 * x.sum(1, keepdim=True), 1)  # noqa: E731
    assert value(mixup_penalty(flat, x_a, x_b, set_id, 0.4)) == 0.0
    # Depends on the input, but only on a feature both endpoints share: still flat along the path.
    x_b[:, 0] = x_a[:, 0]
    w = torch.tensor([[1.5], [-0.5]])
    shared = lambda x: torch.softmax(x[:, :1] @ w.T, 1)  # noqa: E731
    assert value(mixup_penalty(shared, x_a, x_b, set_id, 0.4)) == pytest.approx(0.0, abs=1e-7)
    # A feature that differs between the endpoints: positive.
    moving = lambda x: torch.softmax(x[:, 1:2] @ w.T, 1)  # noqa: E731
    assert value(mixup_penalty(moving, x_a, x_b, set_id, 0.4)) > 1e-3


def test_penalty_is_the_derivative_along_the_path():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    probs = lambda x: torch.softmax(net(x), 1)  # noqa: E731
    x_a, x_b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    set_id = torch.tensor([0, 0, 0, 1, 1, 1])
    t, eps = 0.3, 1e-6

    def set_means(tt):
        p = probs(tt * x_a + (1 - tt) * x_b)
        return torch.stack([p[:3].mean(0), p[3:].mean(0)])

    finite_diff = (set_means(t + eps) - set_means(t - eps)) / (2 * eps)
    got = mixup_penalty(probs, x_a, x_b, set_id, t)
    assert value(got) == pytest.approx(value(finite_diff.abs().mean()), rel=1e-6)
    # Two classes: the paper's |E grad_x f(x_t) . (x_a - x_b)| with f = P(y = 1).
    net2 = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x_t = (t * x_a + (1 - t) * x_b).requires_grad_(True)
    (gx,) = torch.autograd.grad(torch.softmax(net2(x_t), 1)[:, 1].sum(), x_t)
    paper = abs(float((gx * (x_a - x_b)).sum(1).mean()))
    both = torch.zeros(6, dtype=torch.long)
    assert value(mixup_penalty(lambda x: torch.softmax(net2(x), 1), x_a, x_b, both, t)) == pytest.approx(paper, rel=1e-9)


def test_feature_form_equals_the_autograd_form():
    torch.manual_seed(2)
    head = nn.Linear(5, 3).double()
    h_a, h_b = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    set_id = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    closed = mixup_penalty_features(head, h_a, h_b, set_id, 0.65)
    auto = mixup_penalty(lambda h: torch.softmax(head(h), 1), h_a, h_b, set_id, 0.65)
    assert value(closed) == pytest.approx(value(auto), rel=1e-6)  # the closed form runs in float32


@pytest.mark.parametrize("kind", ["tabular", "image"])
def test_training_loss_adds_the_penalty_and_trains(kind):
    task = make_task(kind, n=120)
    hp = {**FAST, "backbone": "mlp" if kind == "tabular" else "cnn", "lam": 0.0}
    batch = BatchSource(task, torch.device("cpu")).batch(task.indices("train"))
    losses = {}
    for lam in (0.0, 5.0):
        method = get_method("fairmixup")({**hp, "lam": lam})
        method.setup(task, FitContext(seed=0))
        torch.manual_seed(0)
        model = method.build_model(task).eval()
        losses[lam] = float(method.training_loss(model, batch).detach())
        assert method.mix_features is (kind == "image")
    assert losses[5.0] > losses[0.0]
    predictor = get_method("fairmixup")({**hp, "lam": 1.0}).fit(task, FitContext(seed=0))
    assert np.isfinite(predictor.predict_proba(task, task.indices("test"))["model"]).all()
