"""FSCL: the authors' fair supervised contrastive loss on two views, then a linear classifier on frozen features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from noharm.bench.trial import TrialConfig, run_trial
from noharm.methods import FitContext, get_method
from noharm.methods.batches import BatchSource
from noharm.methods.fscl import fair_supcon_loss
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 64, "epochs": 1}


def reference(views: np.ndarray, y: np.ndarray, g: np.ndarray, t: float, t_base: float = 0.07,
              group_norm: bool = False) -> float:
    """The reference FairSupConLoss ("FSCL") written out anchor by anchor.

    Anchors are the V*B views, view-major. For anchor i, with s_ij = e_i.e_j / t shifted by the row's
    largest s_ij: positives are every other same-class view; the denominator sums exp(s_ik) over the
    other-class views of the anchor's own group (replaced by 1 when there are none); the anchor's loss
    is -(t / t_base) times the mean over positives of s_ip - log(denominator). FSCL+ divides the term of
    positive p by p's own count of same-group positives, and scales the anchor's loss by
    (N / 8) / (1 + the anchor's count).
    """
    b, v, _ = views.shape
    e = np.concatenate([views[:, k] for k in range(v)])
    y, g = np.tile(y, v), np.tile(g, v)
    n = len(y)
    s = e @ e.T / t
    s = s - s.max(axis=1, keepdims=True)

    def same_group_positives(j):
        return sum(1 for q in range(n) if q != j and y[q] == y[j] and g[q] == g[j])

    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i]]
        denominator = sum(math.exp(s[i, k]) for k in range(n) if y[k] != y[i] and g[k] == g[i])
        log_den = math.log(denominator) if denominator > 0 else 0.0
        if group_norm:
            total = sum((s[i, p] - log_den) / same_group_positives(p) for p in positives)
            loss = -(t / t_base) * total * (n / 8) / (same_group_positives(i) + 1)
        else:
            loss = -(t / t_base) * sum(s[i, p] - log_den for p in positives) / len(positives)
        losses.append(loss)
    return float(np.mean(losses))


def unit_views(b: int, v: int = 2, d: int = 5, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).normal(size=(b, v, d))
    return e / np.linalg.norm(e, axis=2, keepdims=True)


@pytest.mark.parametrize("group_norm", [False, True])
def test_matches_the_reference_loss(group_norm):
    views = unit_views(12)
    rng = np.random.default_rng(1)
    y, g = rng.integers(0, 3, 12), rng.integers(0, 2, 12)
    got = fair_supcon_loss(torch.tensor(views), torch.tensor(y), torch.tensor(g), 0.1, group_norm=group_norm)
    assert float(got) == pytest.approx(reference(views, y, g, 0.1, group_norm=group_norm), rel=1e-9)


def test_loss_by_hand():
    # One view of four unit vectors at right angles, t = t_base = 1 (V = 1 only here, to keep the sums short).
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])[:, None, :]
    y, g = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    # Anchor 0: positive 1 (s = 0), negative 2 (s = -1): term 0 - log(e^-1) = 1. Same for every anchor.
    assert float(fair_supcon_loss(e, y, g, 1.0, base_temperature=1.0)) == pytest.approx(-1.0)
    # Positives are same-class rows of any group: making row 1 a group-0 row changes only the denominators.
    g_same = torch.tensor([0, 0, 1, 1])
    # Anchor 0: negatives none (group 0 holds only class 0) -> term s_01 - max_j s_0j = 0 - 1 = -1.
    assert float(fair_supcon_loss(e, y, g_same, 1.0, base_temperature=1.0)) == pytest.approx(1.0)


def test_pull_does_not_fade_without_negatives():
    """The old defect: positives' own terms in the denominator made the loss 0 with no negatives."""
    e = F.normalize(torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(2)), dim=2).requires_grad_(True)
    y, g = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1])  # one class: no negatives anywhere
    loss = fair_supcon_loss(e, y, g, 0.1)
    loss.backward()
    assert float(loss.detach()) > 0 and float(e.grad.abs().sum()) > 0
    assert torch.isfinite(e.grad).all()


def test_two_views_and_only_the_encoder_in_stage_one():
    task = make_task("image", n=64)
    method = get_method("fscl")({**FAST, "backbone": "cnn", "view_augment": "crop_flip"})
    ctx = FitContext()
    method.prepare_views(task, ctx)
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(64))
    assert not torch.equal(method.second_view(batch), batch.x)  # an independent augmentation of the same rows
    none = get_method("fscl")({**FAST, "view_augment": "none"})
    none.prepare_views(task, ctx)
    assert torch.equal(none.second_view(batch), batch.x)
    model = method.build_model(task)
    names = {id(p) for group in method.parameter_groups(model) for p in group["params"]}
    assert all(id(p) not in names for p in model.head.parameters())
    assert all(id(p) in names for p in model.projection.parameters())


def test_classifier_is_the_logistic_regression_on_frozen_features():
    task = make_task(n=300)
    method = get_method("fscl")({**FAST, "probe_C": 0.5})
    predictor = method.fit(task, FitContext(seed=0))
    model = predictor.model.eval()
    rows = task.indices("train")
    feats = predictor.map_rows(lambda m, batch: m.backbone(batch.x), rows, model.backbone.out_dim)
    mean, std = feats.mean(0), feats.std(0)
    std[std == 0] = 1.0
    clf = LogisticRegression(C=0.5, max_iter=1000).fit((feats - mean) / std, task.y[rows])
    test = task.indices("test")
    test_feats = predictor.map_rows(lambda m, batch: m.backbone(batch.x), test, model.backbone.out_dim)
    logits = model.head(torch.from_numpy(test_feats)).detach().numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], clf.decision_function((test_feats - mean) / std),
                               rtol=1e-3, atol=1e-3)
    assert predictor.stats["epochs_run"] == 1


def test_above_chance_on_digits_shift():
    cfg = TrialConfig(dataset="digits-shift", attribute="style", method="fscl", seed=0,
                      hparams={"epochs": 2, "backbone": "cnn"}, dataset_options={"image_size": 16})
    metrics = run_trial(cfg, device="cpu").metrics
    assert metrics["test/model/acc"] > 0.8  # chance is about 0.5 (digit >= 5)
    assert metrics["test/model/acc/worst"] > 0.65
