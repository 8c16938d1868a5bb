"""FSCL: the fair supervised contrastive loss on hand-made embeddings; positives are same-class pairs across groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods import FitContext, get_method
from methods.batches import BatchSource
from methods.fscl import fair_supcon_loss
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1}


def reference(e: np.ndarray, y: np.ndarray, g: np.ndarray, t: float) -> float:
    """The loss written out anchor by anchor, pair by pair."""
    per_anchor = []
    for i in range(len(y)):
        pos = [p for p in range(len(y)) if y[p] == y[i] and g[p] != g[i]]
        neg = [k for k in range(len(y)) if y[k] != y[i] and g[k] == g[i]]
        if not pos:
            continue
        terms = []
        for p in pos:
            s_ip = e[i] @ e[p] / t
            terms.append(-math.log(math.exp(s_ip) / (math.exp(s_ip) + sum(math.exp(e[i] @ e[k] / t) for k in neg))))
        per_anchor.append(sum(terms) / len(pos))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def test_loss_by_hand():
    # Four unit vectors at right angles: each anchor has one positive (sim 0) and one negative (sim -1).
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y, g = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    assert float(fair_supcon_loss(e, y, g, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)))
    # A fifth row (class 0, group 0) at temperature 0.5, every anchor worked out by hand.
    e5 = torch.cat([e, torch.tensor([[0.6, 0.8]])])
    y5, g5 = torch.tensor([0, 0, 1, 1, 0]), torch.tensor([0, 1, 0, 1, 0])
    anchors = [
        math.log(1 + math.exp(-2)),  # 0: positive 1 (sim 0), negative 2 (sim -2)
        (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3.6))) / 2,  # 1: positives 0, 4; negative 3
        math.log(1 + math.exp(-2) + math.exp(-1.2)),  # 2: positive 3; negatives 0 and 4
        math.log(1 + math.exp(-2)),  # 3: positive 2; negative 1
        math.log(1 + math.exp(-2.8)),  # 4: positive 1 (sim 1.6); negative 2 (sim -1.2)
    ]
    assert float(fair_supcon_loss(e5, y5, g5, 0.5)) == pytest.approx(sum(anchors) / 5, rel=1e-6)


def test_matches_the_written_out_loss_on_random_embeddings():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    y, g = rng.integers(0, 3, 20), rng.integers(0, 3, 20)
    got = fair_supcon_loss(torch.tensor(e), torch.tensor(y), torch.tensor(g), 0.3)
    assert float(got) == pytest.approx(reference(e, y, g, 0.3), rel=1e-9)


def test_positives_are_same_class_pairs_across_groups():
    e = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    # Every same-class pair inside one group: no positives at all, whatever the embeddings.
    assert float(fair_supcon_loss(e, y, torch.tensor([0, 0, 0, 1, 1, 1]), 0.1)) == 0.0
    # Pulling a cross-group same-class pair together lowers the loss; a same-group one does not matter to its anchor.
    g = torch.tensor([0, 1, 0, 1, 0, 1])
    near = e.clone()
    near[1] = near[0]  # 0 and 1: class 0, groups 0 and 1 -> positives
    assert float(fair_supcon_loss(near, y, g, 0.1)) < float(fair_supcon_loss(e, y, g, 0.1))


def test_gradients_are_finite_when_an_anchor_has_no_negatives():
    # Anchor 0 has a positive (row 1) but no negative in its own group: its term is 0, not NaN.
    e = F.normalize(torch.randn(3, 3, generator=torch.Generator().manual_seed(2)), dim=1).requires_grad_(True)
    y, g = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    loss = fair_supcon_loss(e, y, g, 0.1)
    loss.backward()
    assert torch.isfinite(e.grad).all()
    assert float(loss.detach()) == pytest.approx(reference(e.detach().numpy(), y.numpy(), g.numpy(), 0.1), rel=1e-6)
    assert float(loss.detach()) > 0


def test_linear_probe_keeps_cross_entropy_off_the_encoder():
    task = make_task(n=64)
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(64))
    for probe, expect_same in ((True, True), (False, False)):
        method = get_method("fscl")({**FAST, "linear_probe": probe, "con_weight": 0.5})
        method.setup(task, FitContext())
        torch.manual_seed(0)
        model = method.build_model(task).eval()
        params = list(model.backbone.parameters())
        g_total = torch.autograd.grad(method.training_loss(model, batch), params)
        emb = F.normalize(model.projection(model.backbone(batch.x)), dim=1)
        g_con = torch.autograd.grad(0.5 * fair_supcon_loss(emb, batch.y, batch.group, 0.1), params)
        same = all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g_total, g_con))
        assert same is expect_same
