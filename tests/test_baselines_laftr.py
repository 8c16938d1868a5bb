"""LAFTR: the adversary objectives of Madras et al. on hand-made tensors, and who ascends / descends them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noharm.datasets.base import DatasetError
from noharm.methods import FitContext, get_method
from noharm.methods.batches import BatchSource
from noharm.methods.hparams import HparamError
from noharm.methods.laftr import laftr_adversary_loss
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1}

# Eight rows, two groups (a), binary labels; h = the adversary's P(a = 1).
A = np.array([0, 0, 0, 0, 1, 1, 1, 1])
Y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
H = np.array([0.1, 0.4, 0.3, 0.2, 0.9, 0.5, 0.6, 0.8])


def loss(objective, h=H, a=A, y=Y, n_groups=2):
    h = np.asarray(h)
    proba = torch.tensor(np.stack([1 - h, h], axis=1) if h.ndim == 1 else h, dtype=torch.float64)
    return float(laftr_adversary_loss(proba, torch.tensor(a), torch.tensor(y), objective, n_groups, 2))


def mean_abs(mask):
    return np.abs(H[mask] - A[mask]).mean()


def test_dp_is_one_minus_the_group_normalised_l1_error():
    expected = 1 - sum(mean_abs(A == a) for a in (0, 1))
    assert loss("dp") == pytest.approx(expected)
    assert expected == pytest.approx(1 - (0.25 + 0.3))


def test_eqodds_sums_over_label_conditions():
    expected = 2 - sum(mean_abs((A == a) & (Y == y)) for a in (0, 1) for y in (0, 1))
    assert loss("eqodds") == pytest.approx(expected)


def test_eqopp_counts_positive_rows_only():
    expected = 1 - sum(mean_abs((A == a) & (Y == 1)) for a in (0, 1))
    assert loss("eqopp") == pytest.approx(expected)
    # Changing h on a negative row does not move it.
    h = H.copy()
    h[0] = 0.99
    assert loss("eqopp", h=h) == pytest.approx(expected)
    assert loss("dp", h=h) != pytest.approx(loss("dp"))


def test_chance_is_zero_and_a_perfect_adversary_scores_the_number_of_conditions():
    for n_groups in (2, 3):
        a = np.arange(12) % n_groups
        y = (np.arange(12) // 6) % 2
        uniform = np.full((12, n_groups), 1 / n_groups)
        perfect = np.eye(n_groups)[a]
        for objective, top in (("dp", 1), ("eqodds", 2), ("eqopp", 1)):
            assert loss(objective, h=uniform, a=a, y=y, n_groups=n_groups) == pytest.approx(0.0, abs=1e-12)
            assert loss(objective, h=perfect, a=a, y=y, n_groups=n_groups) == pytest.approx(top)


def test_adversary_ascends_and_encoder_descends_the_objective():
    task = make_task(n=64)
    method = get_method("laftr")({**FAST, "adv_weight": 2.0, "objective": "eqodds"})
    method.setup(task, FitContext())
    torch.manual_seed(0)
    model = method.build_model(task).eval()
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(64))
    encoder = list(model.backbone.parameters())
    adversary = list(model.adversary.parameters())

    total = torch.autograd.grad(method.training_loss(model, batch), encoder + adversary)
    z = model.backbone(batch.x)
    ce = F.cross_entropy(model.head(z), batch.y)
    a_in = torch.cat([z, F.one_hot(batch.y, 2).float()], dim=1)
    l_adv = laftr_adversary_loss(torch.softmax(model.adversary(a_in), 1), batch.group, batch.y, "eqodds", 2, 2)
    g_ce = torch.autograd.grad(ce, encoder, retain_graph=True)
    g_adv = torch.autograd.grad(l_adv, encoder + adversary)
    for got, c, a in zip(total[:len(encoder)], g_ce, g_adv[:len(encoder)]):
        torch.testing.assert_close(got, c + 2.0 * a)  # encoder: minimise CE + gamma * L_adv
    for got, a in zip(total[len(encoder):], g_adv[len(encoder):]):
        torch.testing.assert_close(got, -a)  # adversary: maximise L_adv


def test_conditional_adversary_sees_the_label():
    task = make_task(n=40)
    for objective, extra in (("dp", 0), ("eqodds", 2), ("eqopp", 2)):
        model = get_method("laftr")({**FAST, "objective": objective}).build_model(task)
        assert model.adversary[0].in_features == model.backbone.out_dim + extra


def test_bad_inputs_are_refused():
    with pytest.raises(HparamError, match="objective"):
        get_method("laftr")({"objective": "parity"})
    multi = make_task(n=60, num_classes=3)
    with pytest.raises(HparamError, match="binary label"):
        get_method("laftr")({**FAST, "objective": "eqopp"}).fit(multi, FitContext())
    single = make_task(n=60, n_groups=1)
    with pytest.raises(DatasetError, match="at least two groups"):
        get_method("laftr")(FAST).fit(single, FitContext())
    with pytest.raises(HparamError, match="objective must be one of"):
        laftr_adversary_loss(torch.ones(2, 2) / 2, torch.tensor([0, 1]), torch.tensor([0, 1]), "dpp", 2, 2)
