"""Evaluation sized to the work: the inference batch, each split scored once, train rows only on request."""

import numpy as np
import pytest
import torch

from noharm.analysis import predictions as P
from noharm.bench.trial import TrialConfig, run_trial
from noharm.methods import FitContext, TaskData, get_method
from noharm.methods.batches import EVAL_ACTIVATION_FACTOR, EVAL_BATCH_MAX, BatchSource, eval_batch_size
from noharm.methods.erm import ERM

CPU = torch.device("cpu")
GB = 2**30
DIGITS = dict(dataset="digits-shift", attribute="style", method="erm", seed=0,
              hparams={"epochs": 2, "backbone": "cnn", "batch_size": 64}, dataset_options={"image_size": 16})


def test_eval_batch_shrinks_as_the_input_grows():
    sizes = [eval_batch_size(shape, CPU, available=16 * GB) for shape in ((100,), (3, 32, 32), (3, 64, 64), (3, 224, 224))]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert sizes[0] == EVAL_BATCH_MAX  # tabular rows: as many as allowed
    assert sizes[3] == 55  # 32 MB of float input at 224 px (602,112 bytes per image)
    assert sizes[2] == 682


def test_eval_batch_is_capped_by_the_memory_at_hand():
    per_image = 4 * 3 * 224 * 224 * EVAL_ACTIVATION_FACTOR
    # 1 GB available, a quarter of it for one batch: 13 images at 224 px, even with a training batch of 128.
    assert eval_batch_size((3, 224, 224), CPU, train_batch=128, available=GB) == GB // 4 // per_image == 13
    assert eval_batch_size((3, 224, 224), CPU, train_batch=128, available=64 * GB) == 128  # the training batch fits
    assert eval_batch_size((3, 224, 224), CPU, available=2**20) == 1  # never zero
    # The host's own memory is read when not given.
    assert 1 <= eval_batch_size((3, 224, 224), CPU) <= EVAL_BATCH_MAX


def test_batch_source_sizes_its_own_eval_batch():
    task = make_task(40, (3, 16, 16))
    source = BatchSource(task, CPU)
    sizes = [len(b.index) for b in source.iterate(np.arange(40), None)]
    assert sum(sizes) == 40 and sizes[0] == min(40, source.eval_batch)


def make_task(n: int, shape: tuple[int, ...], seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, 2, n).astype(np.int64)
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    return TaskData(x=x, y=y, group=(np.arange(n) % 2).astype(np.int64), split=split, n_groups=2,
                    group_names=("a", "b"), num_classes=2, kind="image")


def count_inferred_rows(monkeypatch) -> list[int]:
    """Rows per batch passed through ERM's inference (training steps do not call `infer`)."""
    seen: list[int] = []
    original = ERM.infer

    def spy(self, model, batch):
        seen.append(len(batch.index))
        return original(self, model, batch)

    monkeypatch.setattr(ERM, "infer", spy)
    return seen


def test_each_split_is_scored_once_and_train_not_at_all(monkeypatch):
    seen = count_inferred_rows(monkeypatch)
    res = run_trial(TrialConfig(**DIGITS), device="cpu")
    split = res.predictions["split"]
    n_val, n_test = int((split == "val").sum()), int((split == "test").sum())
    # Validation once per epoch (early stopping), test once; no second validation pass, no training rows.
    assert sum(seen) == 2 * n_val + n_test
    assert set(split) == {"val", "test"} and len(res.predictions) == n_val + n_test == 718
    assert res.cost["eval_samples_per_second"] > 0 and res.cost["eval_batch_size"] >= 64


def test_reused_validation_scores_equal_a_fresh_pass():
    task = make_task(90, (3, 16, 16))
    method = ERM({"epochs": 3, "backbone": "cnn", "batch_size": 16, "lr": 0.01})
    ctx = FitContext(seed=0, objective=lambda p: float(p[:, 1].mean()))
    predictor = method.fit(task, ctx)
    val = task.indices("val")
    assert predictor.memo is not None
    kept = predictor.predict_proba(task, val)["model"]
    predictor.memo = None
    fresh = predictor.predict_proba(task, val)["model"]
    assert np.array_equal(kept, fresh)


def test_an_edited_model_is_scored_again():
    """A post-hoc change of the weights (DFR's last layer, group thresholds) invalidates the kept scores."""
    task = make_task(90, (3, 16, 16))
    method = ERM({"epochs": 1, "backbone": "cnn", "batch_size": 16})
    predictor = method.fit(task, FitContext(seed=0, objective=lambda p: float(p[:, 1].mean())))
    val = task.indices("val")
    before = predictor.predict_proba(task, val)["model"]
    with torch.no_grad():
        predictor.model.head.bias.add_(torch.tensor([3.0, -3.0]))
    after = predictor.predict_proba(task, val)["model"]
    assert (after[:, 0] > before[:, 0]).all()
    # Other rows than the kept ones are scored, not recalled.
    assert predictor.predict_proba(task, val[:5])["model"].shape == (5, 2)


def test_train_predictions_on_request(monkeypatch):
    seen = count_inferred_rows(monkeypatch)
    res = run_trial(TrialConfig(**DIGITS, train_predictions=True), device="cpu")
    split = res.predictions["split"].to_numpy()
    assert set(split) == {"train", "val", "test"} and len(split) == 1797
    n_val, n_test = int((split == "val").sum()), int((split == "test").sum())
    assert sum(seen) == 2 * n_val + n_test + int((split == "train").sum())
    # Same val/test numbers as a trial without training rows.
    plain = run_trial(TrialConfig(**DIGITS), device="cpu")
    assert plain.metrics == res.metrics
    keep = np.isin(split, ["val", "test"])
    assert np.array_equal(P.proba(res.predictions[keep], "model"), P.proba(plain.predictions, "model"))


def test_a_method_declaring_train_readers_gets_train_rows(monkeypatch):
    monkeypatch.setattr(get_method("erm"), "needs_train_predictions", True)
    res = run_trial(TrialConfig(**{**DIGITS, "hparams": {**DIGITS["hparams"], "epochs": 1}}), device="cpu")
    assert set(res.predictions["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("method", ["dfr", "group-threshold"])
def test_post_hoc_methods_are_scored_with_their_final_weights(method):
    """DFR and group-threshold change the model after training: the best epoch's kept scores no longer apply."""
    task = make_task(150, (3, 16, 16))
    predictor = get_method(method)({"epochs": 1, "backbone": "cnn", "batch_size": 16}).fit(
        task, FitContext(seed=0, objective=lambda p: float(p[:, 1].mean())))
    val = task.indices("val")
    assert predictor.memo is not None and predictor._recall(task, val) is None
    scored = predictor.predict_proba(task, val)["model"]
    predictor.memo = None
    assert np.array_equal(scored, predictor.predict_proba(task, val)["model"])
