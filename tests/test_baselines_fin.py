"""FIN: each row is normalised with its own group's learnable statistics; training makes them differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noharm.methods import FitContext, get_method
from noharm.methods.batches import BatchSource
from noharm.methods.fin import FairIdentityNorm
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 32, "epochs": 3, "lr": 1e-2}


def reference_fin(x: np.ndarray, attr: np.ndarray, mus: np.ndarray, sigmas: np.ndarray, momentum: float) -> np.ndarray:
    """Harvard-GF's Fair_Identity_Normalizer written out row by row:
    x_i <- (1 - m) * (x_i - mu[a_i]) / (log(1 + exp(sigma[a_i])) + 1e-6) + m * x_i."""
    out = np.empty_like(x)
    for i in range(len(x)):
        scale = np.log1p(np.exp(sigmas[attr[i]])) + 1e-6
        out[i] = (1 - momentum) * (x[i] - mus[attr[i]]) / scale + momentum * x[i]
    return out


def test_matches_the_reference_normaliser_and_routes_by_group():
    torch.manual_seed(0)
    norm = FairIdentityNorm(n_groups=3, dim=4, momentum=0.3)
    z = torch.randn(5, 4, dtype=torch.float64)
    group = torch.tensor([0, 2, 1, 2, 0])
    norm = norm.double()
    with torch.no_grad():
        norm.mu.copy_(torch.arange(12.0).view(3, 4) / 7)
        norm.tau.copy_(torch.linspace(-1, 2, 12).view(3, 4))
    out = norm(z, group).detach().numpy()
    expected = reference_fin(z.numpy(), group.numpy(), norm.mu.detach().numpy(), norm.tau.detach().numpy(), 0.3)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # Same features, another group: another output.
    assert not np.allclose(norm(z, torch.zeros(5, dtype=torch.long)).detach().numpy(), out)


def test_reference_defaults_and_random_initialisation():
    method = get_method("fin")()
    assert method.hp["momentum"] == 0.3
    torch.manual_seed(1)
    norm = FairIdentityNorm(n_groups=2, dim=4000, momentum=0.3)
    # mu ~ N(0, 0.01^2), tau ~ N(0, 1): the reference's --fin_mu 0.01 and --fin_sigma 1.
    assert float(norm.mu.detach().std()) == pytest.approx(0.01, rel=0.05)
    assert float(norm.tau.detach().std()) == pytest.approx(1.0, rel=0.05)
    assert abs(float(norm.tau.detach().mean())) < 0.05
    assert norm.eps == 1e-6
    torch.manual_seed(1)
    again = FairIdentityNorm(n_groups=2, dim=4000, momentum=0.3)
    assert torch.equal(norm.tau, again.tau)  # seeded by the trial's seed


def test_per_group_parameters_differ_after_training():
    task = make_task(n=300)
    method = get_method("fin")({**FAST, "momentum": 0.3})
    predictor = method.fit(task, FitContext(seed=0))
    mu, tau = predictor.model.norm.mu.detach(), predictor.model.norm.tau.detach()
    torch.manual_seed(0)
    start = method.build_model(task).norm  # the same seeded draw the trial started from
    assert float((mu - start.mu.detach()).abs().max()) > 1e-2
    assert float((tau - start.tau.detach()).abs().max()) > 1e-2


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
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(64))
    got = float(method.training_loss(model, batch).detach())
    with torch.no_grad():
        z = model.backbone(batch.x)
        mu, sigma = model.norm.mu[batch.group], F.softplus(model.norm.tau[batch.group]) + 1e-6
        expected = float(F.cross_entropy(model.head((z - mu) / sigma), batch.y))
    assert got == pytest.approx(expected, rel=1e-5)
