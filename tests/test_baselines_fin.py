"""FIN: each row is normalised with its own group's learnable statistics; training makes them differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods import FitContext, get_method
from methods.batches import BatchSource
from methods.fin import FairIdentityNorm
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 32, "epochs": 3, "lr": 1e-2}


def test_starts_as_identity_and_routes_by_group():
    norm = FairIdentityNorm(n_groups=3, dim=4, momentum=0.25)
    z = torch.randn(5, 4)
    group = torch.tensor([0, 2, 1, 2, 0])
    torch.testing.assert_close(norm(z, group), z, atol=1e-4, rtol=0)  # mu = 0, sigma = 1
    with torch.no_grad():
        norm.mu.copy_(torch.arange(12.0).view(3, 4))
        norm.tau.copy_(torch.linspace(-1, 2, 12).view(3, 4))
    out = norm(z, group)
    sigma = F.softplus(norm.tau) + norm.eps
    for i, g in enumerate(group.tolist()):
        expected = 0.25 * z[i] + 0.75 * (z[i] - norm.mu[g]) / sigma[g]
        torch.testing.assert_close(out[i], expected.detach())
    # Same features, another group: another output.
    assert not torch.allclose(norm(z, torch.zeros(5, dtype=torch.long)), out)


def test_per_group_parameters_differ_after_training():
    task = make_task(n=300)
    method = get_method("fin")({**FAST, "momentum": 0.3})
    predictor = method.fit(task, FitContext(seed=0))
    mu, tau = predictor.model.norm.mu.detach(), predictor.model.norm.tau.detach()
    # Both groups start from the same (identity) parameters; only training can separate them.
    assert float((mu[0] - mu[1]).abs().max()) > 1e-2
    assert float((tau[0] - tau[1]).abs().max()) > 1e-2


def test_inference_reads_the_rows_group():
    task = make_task(n=200)
    method = get_method("fin")({**FAST, "epochs": 1})
    predictor = method.fit(task, FitContext(seed=0))
    with torch.no_grad():
        predictor.model.norm.mu[1] += 5.0  # only group 1 rows may move
    rows = task.indices("test")
    after = predictor.predict_proba(task, rows)["model"]
    with torch.no_grad():
        predictor.model.norm.mu[1] -= 5.0
    before = predictor.predict_proba(task, rows)["model"]
    moved = np.abs(after - before).max(axis=1) > 1e-6
    assert np.array_equal(moved, task.group[rows] == 1)


def test_training_loss_uses_the_group():
    task = make_task(n=64)
    method = get_method("fin")({**FAST, "momentum": 0.0})
    torch.manual_seed(0)
    model = method.build_model(task).eval()
    with torch.no_grad():
        model.norm.mu[1] = 3.0
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(64))
    got = float(method.training_loss(model, batch).detach())
    with torch.no_grad():
        z = model.backbone(batch.x)
        z = z - torch.where(batch.group[:, None] == 1, 3.0, 0.0)
        expected = float(F.cross_entropy(model.head(z / (F.softplus(model.norm.tau[0]) + 1e-5)), batch.y))
    assert got == pytest.approx(expected, rel=1e-5)
