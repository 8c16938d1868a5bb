"""GapReg: the penalty is the gap in mean predicted probability between groups (fair-mixup / NH-Fair's GapReg)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noharm.methods import FitContext, get_method
from noharm.methods.base import TaskData
from noharm.methods.batches import BatchSource
from noharm.methods.gapreg import probability_gap
from noharm.methods.hparams import HparamError
from tests.conftest import make_task


def reference_penalty(p1: np.ndarray, y: np.ndarray, a: np.ndarray, fairness: str) -> float:
    """The reference's binary, two-group formulas written out: p1 = P(class 1), a in {0, 1}.

    dp:    |mean p1 over a=0  -  mean p1 over a=1|
    eopp:  the same over rows with y = 1 only
    eodds: the y = 0 term plus the y = 1 term
    """
    def gap(rows):
        return abs(p1[rows & (a == 0)].mean() - p1[rows & (a == 1)].mean())

    everyone = np.ones(len(y), bool)
    if fairness == "dp":
        return gap(everyone)
    if fairness == "eopp":
        return gap(y == 1)
    return gap(y == 0) + gap(y == 1)


def fixed_batch():
    logits = torch.tensor([[0.3, -0.2], [1.5, 0.1], [-0.4, 0.9], [0.0, 0.0], [2.0, -1.0], [-1.2, 0.3], [0.5, 0.6], [0.2, -0.7]])
    y = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0])
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return logits, y, a


@pytest.mark.parametrize("fairness", ["dp", "eopp", "eodds"])
def test_binary_penalty_matches_the_reference_formula(fairness):
    logits, y, a = fixed_batch()
    proba = torch.softmax(logits, dim=1)
    got = float(probability_gap(proba, y, a, 2, fairness))
    assert got == pytest.approx(reference_penalty(proba[:, 1].numpy(), y.numpy(), a.numpy(), fairness), rel=1e-6)
    assert got > 0.01


def test_multiclass_many_groups_by_hand():
    # Three classes, three groups (group 3 of 4 absent): DP is the largest class gap between the group means.
    proba = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]])
    group = torch.tensor([0, 0, 1, 2, 2])
    y = torch.tensor([0, 1, 2, 1, 0])
    means = np.array([[0.6, 0.25, 0.15], [0.1, 0.1, 0.8], [0.25, 0.45, 0.3]])
    dp = (means.max(0) - means.min(0)).max()
    assert float(probability_gap(proba, y, group, 4, "dp")) == pytest.approx(dp)
    # EOdds: per class c, rows with y = c, mean of p_c per group present there.
    # c=0: groups 0 (0.7) and 2 (0.3); c=1: groups 0 (0.3) and 2 (0.6); c=2: only group 1 -> 0.
    assert float(probability_gap(proba, y, group, 4, "eodds")) == pytest.approx(0.4 + 0.3)


def test_one_group_has_no_gap():
    proba = torch.softmax(torch.randn(6, 2), dim=1)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    for fairness in ("dp", "eopp", "eodds"):
        assert float(probability_gap(proba, y, torch.ones(6, dtype=torch.long), 2, fairness)) == 0.0


def test_training_loss_is_cross_entropy_plus_weighted_probability_gap():
    task = make_task(n=80, n_groups=2)
    method = get_method("gapreg")({"backbone": "mlp", "hidden": 16, "gap_weight": 0.7, "fairness": "eodds"})
    method.setup(task, FitContext())
    torch.manual_seed(0)
    model = method.build_model(task).eval()
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(80))
    with torch.no_grad():
        logits = model(batch.x)
        got = float(method.training_loss(model, batch))
    p1 = torch.softmax(logits, 1)[:, 1].numpy()
    expected = float(F.cross_entropy(logits, batch.y)) + 0.7 * reference_penalty(p1, task.y, task.group, "eodds")
    assert got == pytest.approx(expected, rel=1e-5)


def test_eopp_needs_binary_labels():
    task = make_task(n=90, num_classes=3)
    with pytest.raises(HparamError, match="eopp' needs a binary label"):
        get_method("gapreg")({"fairness": "eopp", "epochs": 1}).fit(task, FitContext())


def biased_task(n: int = 1200, seed: int = 0) -> TaskData:
    """Group 1 has far more positives than group 0, and x carries the group: ERM predicts by group."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    y = (rng.random(n) < np.where(group == 1, 0.8, 0.2)).astype(np.int64)
    x = np.stack([y + 0.8 * rng.normal(size=n), 2.0 * group + 0.3 * rng.normal(size=n), rng.normal(size=n)], 1)
    split = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    return TaskData(x=x.astype(np.float32), y=y, group=group.astype(np.int64), split=split, n_groups=2,
                    group_names=("g0", "g1"), num_classes=2, kind="tabular")


def test_reduces_the_probability_gap_against_erm():
    task = biased_task()
    test = task.indices("test")
    hp = {"backbone": "mlp", "hidden": 32, "batch_size": 64, "epochs": 8, "lr": 3e-3}

    def dp_gap(method, extra):
        proba = get_method(method)({**hp, **extra}).fit(task, FitContext(seed=0)).predict_proba(task, test)["model"][:, 1]
        g = task.group[test]
        return abs(proba[g == 0].mean() - proba[g == 1].mean())

    erm, fair = dp_gap("erm", {}), dp_gap("gapreg", {"gap_weight": 5.0})
    assert erm > 0.4  # the labels' own gap is 0.6: ERM follows it
    assert fair < 0.5 * erm


@pytest.mark.parametrize("fairness, cells", [("dp", "group"), ("eodds", "group_label")])
def test_batches_are_balanced_like_fair_mixups(fairness, cells):
    """fair-mixup draws as many rows per group (per group x label for EO); `batches=shuffled` keeps ERM's order."""
    task = biased_task(n=3000)
    task.group[task.group == 1] = np.where(np.random.default_rng(1).random((task.group == 1).sum()) < 0.3, 1, 0)
    method = get_method("gapreg")({"fairness": fairness})
    method.setup(task, FitContext())
    rows = method.train_indices(task, 0, torch.Generator().manual_seed(0))
    assert len(rows) == len(task.indices("train")) and np.isin(rows, task.indices("train")).all()
    key = task.group[rows] if cells == "group" else task.group[rows] * 2 + task.y[rows]
    shares = np.bincount(key) / len(rows)
    np.testing.assert_allclose(shares, 1 / len(shares), atol=0.04)
    shuffled = get_method("gapreg")({"fairness": fairness, "batches": "shuffled"})
    shuffled.setup(task, FitContext())
    order = shuffled.train_indices(task, 0, torch.Generator().manual_seed(0))
    assert np.array_equal(np.sort(order), task.indices("train"))
