"""resample / reweight: group (and group x label) balance, in expectation over batches; the loop's sampling hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noharm.methods import FitContext, get_method
from noharm.methods.batches import BatchSource
from noharm.methods.hparams import HparamError
from noharm.methods.sampling import balanced_draw, cell_ids, inverse_frequency_weights
from noharm.methods.training import train
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 16, "batch_size": 50, "epochs": 1}


def imbalanced_task():
    """Group 1 is about 15% of the rows; labels are skewed differently per group."""
    task = make_task(n=2000, seed=3)
    rng = np.random.default_rng(1)
    task.group = (rng.random(len(task.y)) < 0.15).astype(np.int64)
    task.y = np.where(task.group == 1, rng.random(len(task.y)) < 0.2, rng.random(len(task.y)) < 0.6).astype(np.int64)
    return task


def test_inverse_frequency_weights_by_hand():
    w = inverse_frequency_weights(np.array([0, 1, 1, 1]))
    # 1/1 and 1/3, rescaled to mean 1: each cell carries half the total weight.
    np.testing.assert_allclose(w, [2.0, 2 / 3, 2 / 3, 2 / 3])
    assert w.mean() == pytest.approx(1.0)


def test_cells():
    g, y = np.array([0, 0, 1, 2]), np.array([1, 0, 1, 0])
    assert cell_ids(g, y, 2, "group").tolist() == [0, 0, 1, 2]
    assert cell_ids(g, y, 2, "group_label").tolist() == [1, 0, 3, 4]
    with pytest.raises(HparamError, match="balance must be one of"):
        cell_ids(g, y, 2, "label")


@pytest.mark.parametrize("balance", ["group", "group_label"])
def test_resampled_batches_are_balanced_in_expectation(balance):
    task = imbalanced_task()
    method = get_method("resample")({**FAST, "balance": balance})
    method.setup(task, FitContext())
    train_rows = task.indices("train")
    cells = cell_ids(task.group, task.y, 2, balance)
    present, raw_counts = np.unique(cells[train_rows], return_counts=True)
    n_cells = len(present)
    assert raw_counts.min() / len(train_rows) < 0.7 / n_cells  # far from balanced before resampling
    source = BatchSource(task, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    counts, n_batches = np.zeros(4), 0
    for epoch in range(20):
        order = method.train_indices(task, epoch, gen)
        assert len(order) == len(train_rows) and np.isin(order, train_rows).all()
        for batch in source.iterate(order, 50):
            counts += np.bincount(cells[batch.index.numpy()], minlength=4)[:4]
            n_batches += 1
    share = counts[counts > 0] / counts.sum()
    assert len(share) == n_cells and n_batches > 300
    np.testing.assert_allclose(share, 1.0 / n_cells, atol=0.02)


def test_balanced_draw_is_reproducible():
    rows, w = np.arange(10), np.linspace(1, 2, 10)
    a = balanced_draw(rows, w, torch.Generator().manual_seed(5))
    b = balanced_draw(rows, w, torch.Generator().manual_seed(5))
    assert np.array_equal(a, b) and len(a) == 10


@pytest.mark.parametrize("balance", ["group", "group_label"])
def test_reweight_weights_are_inverse_to_frequency(balance):
    task = imbalanced_task()
    method = get_method("reweight")({**FAST, "balance": balance})
    method.setup(task, FitContext())
    train_rows = task.indices("train")
    cells = cell_ids(task.group, task.y, 2, balance)[train_rows]
    w = method.row_weights.numpy()
    counts = np.bincount(cells)
    # weight * cell count is the same for every row: weights inverse to frequency.
    prod = w[train_rows] * counts[cells]
    np.testing.assert_allclose(prod, prod[0], rtol=1e-5)
    # Every cell carries the same total weight; rows outside train never weigh anything.
    totals = np.bincount(cells, weights=w[train_rows])
    np.testing.assert_allclose(totals[totals > 0], len(train_rows) / (counts > 0).sum(), rtol=1e-5)
    assert (w[task.indices("test")] == 0).all() and (w[task.indices("val")] == 0).all()


def test_reweighted_loss_is_the_balanced_risk():
    """Over the whole train split, the weighted mean is the average of the cells' mean losses."""
    task = imbalanced_task()
    method = get_method("reweight")({**FAST, "balance": "group_label"})
    method.setup(task, FitContext())
    torch.manual_seed(0)
    model = method.build_model(task).eval()
    batch = BatchSource(task, torch.device("cpu")).batch(task.indices("train"))
    loss = method.training_loss(model, batch)
    with torch.no_grad():
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none").numpy()
    cells = cell_ids(batch.group.numpy(), batch.y.numpy(), 2, "group_label")
    expected = np.mean([ce[cells == c].mean() for c in np.unique(cells)])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_loop_draws_each_epoch_from_train_indices(monkeypatch):
    """The hook the loop calls per epoch; the default is a permutation of the train rows."""
    task = make_task(n=300)
    erm = get_method("erm")({**FAST, "epochs": 2})
    order = erm.train_indices(task, 0, torch.Generator().manual_seed(0))
    assert sorted(order) == sorted(task.indices("train")) and not np.array_equal(order, np.sort(order))

    method = get_method("resample")({**FAST, "epochs": 2})
    seen, calls = [], []
    original = type(method).train_indices

    def spy(self, task_, epoch, generator):
        calls.append(epoch)
        out = original(self, task_, epoch, generator)
        seen.append(out)
        return out

    monkeypatch.setattr(type(method), "train_indices", spy)
    predictor = train(method, task, FitContext(seed=0))
    assert calls == [0, 1]
    assert predictor.stats["train_samples"] == sum(len(o) for o in seen)
    assert len(set(seen[0].tolist())) < len(seen[0])  # drawn with replacement


def test_bad_balance_is_refused():
    for name in ("resample", "reweight"):
        with pytest.raises(HparamError, match="balance"):
            get_method(name)({"balance": "label"})
