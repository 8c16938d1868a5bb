"""A method restores its own model: every built-in method, and a new method with its own predictor class.

`Method.restore(task, state, ctx)` rebuilds the predictor `fit` returned from its saved `state_dict()`. The
stress tests re-score stored models only through it (and rebuild the task with `bench.task`, like
`run_trial`), so a method defined here, outside bench/, goes through a stored run and re-scoring untouched.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from noharm.analysis import predictions as P
from noharm.bench.errors import ConfigError
from noharm.bench.stress.rescore import PairRescorer, RunFolder
from noharm.bench.trial import TrialConfig, run_trial, save_trial
from noharm.methods import METHODS, FitContext, Method, Predictor, TaskData, get_method, register_method
from tests.conftest import make_task

TINY = {"epochs": 2, "batch_size": 64, "hidden": 16}


def saved_and_loaded(state: dict) -> dict:
    """The state as a run's model.pt gives it back (torch.save, then a weights-only load)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if n not in ("tiny-erm", "slow-erm", "always-fails")])
def test_every_built_in_method_restores_its_predictions(name):
    """fit, save the weights, restore in a fresh method object: the same scores on every candidate."""
    task = make_task("tabular", n=300, seed=1)
    cls = get_method(name)
    hp = {k: v for k, v in TINY.items() if k in cls.hparams}
    val = task.indices("val")
    ctx = FitContext(seed=0, objective=lambda proba: float((proba.argmax(1) == task.y[val]).mean()))
    torch.manual_seed(0)
    fitted = cls(hp).fit(task, ctx)
    test = task.indices("test")
    want = fitted.predict_proba(task, test)
    restored = cls(hp).restore(task, saved_and_loaded(fitted.state_dict()), FitContext(seed=0))
    assert type(restored) is type(fitted)
    got = restored.predict_proba(task, test)
    assert set(got) == set(want) == set(cls.candidates)
    for cand in want:
        np.testing.assert_allclose(got[cand], want[cand], atol=1e-6, err_msg=f"{name} candidate {cand}")
    # A group discriminator, when the method declares one, comes back too.
    if cls.group_discriminator:
        np.testing.assert_allclose(restored.predict_group_proba(task, test), fitted.predict_group_proba(task, test),
                                   atol=1e-6)
    else:
        assert restored.predict_group_proba(task, test) is None


def test_group_models_restore_a_one_class_group_as_its_prior():
    """A group whose training rows hold one class gets a constant model; restoring brings back that model too."""
    from noharm.methods.group_models import PriorModel

    task = make_task("tabular", n=300, seed=1)
    one_class = (task.group == 1) & (task.split == "train")
    task.y[one_class] = 0
    ctx = FitContext(seed=0)
    fitted = get_method("group-models")(TINY).fit(task, ctx)
    restored = get_method("group-models")(TINY).restore(task, saved_and_loaded(fitted.state_dict()), ctx)
    assert [type(m) for m in restored.models] == [type(m) for m in fitted.models]
    assert isinstance(restored.models[1], PriorModel) and not isinstance(restored.models[0], PriorModel)
    test = task.indices("test")
    np.testing.assert_allclose(restored.predict_proba(task, test)["experts"],
                               fitted.predict_proba(task, test)["experts"], atol=1e-6)


# -- a method bench/ has never heard of: nearest class centroids, with nearest group centroids as its discriminator --

def centroid_inputs(x: np.ndarray) -> torch.Tensor:
    """Rows as flat float vectors (images scaled to [0, 1])."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    return (t / 255.0 if x.dtype == np.uint8 else t).flatten(1)


class CentroidPredictor(Predictor):
    """Softmax of minus the squared distance to each class centroid."""

    def __init__(self, class_centroids: torch.Tensor, group_centroids: torch.Tensor):
        self.class_centroids, self.group_centroids = class_centroids, group_centroids

    @staticmethod
    def _soft(x: np.ndarray, centroids: torch.Tensor) -> np.ndarray:
        d = torch.cdist(centroid_inputs(x), centroids) ** 2
        return torch.softmax(-d, dim=1).numpy()

    def predict_proba(self, task: TaskData, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"model": self._soft(task.x[indices], self.class_centroids)}

    def predict_group_proba(self, task: TaskData, indices: np.ndarray) -> np.ndarray:
        return self._soft(task.x[indices], self.group_centroids)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"class_centroids": self.class_centroids, "group_centroids": self.group_centroids}


class NearestCentroid(Method):
    description = "nearest class centroid (test-only method with its own predictor)"
    group_discriminator = True

    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        train = task.indices("train")
        x = centroid_inputs(task.x[train])
        y, g = torch.from_numpy(task.y[train]), torch.from_numpy(task.group[train])
        return CentroidPredictor(torch.stack([x[y == c].mean(0) for c in range(task.num_classes)]),
                                 torch.stack([x[g == k].mean(0) for k in range(task.n_groups)]))

    def restore(self, task: TaskData, state, ctx: FitContext) -> Predictor:
        return CentroidPredictor(state["class_centroids"], state["group_centroids"])


class Unrestorable(NearestCentroid):
    """Keeps the base class's `restore`: re-scoring must refuse it with one clear line."""

    restore = Method.restore


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ERM and the two test-only methods on 16 px digits-shift, saved as run folders."""
    register_method("nearest-centroid")(NearestCentroid)
    register_method("unrestorable")(Unrestorable)
    try:
        root = tmp_path_factory.mktemp("restore-runs")
        out = {}
        for method, hp in (("erm", {"epochs": 1, "backbone": "cnn", "batch_size": 128}), ("nearest-centroid", {}),
                           ("unrestorable", {})):
            cfg = TrialConfig(dataset="digits-shift", attribute="style", method=method, seed=0, hparams=hp,
                              dataset_options={"image_size": 16})
            out[method] = save_trial(run_trial(cfg, device="cpu"), root / method)
        yield out
    finally:
        for name in ("nearest-centroid", "unrestorable"):
            METHODS._items.pop(name, None)  # other tests list every registered method


def rescorer(runs, tmp_path, method="nearest-centroid"):
    return PairRescorer(RunFolder.read(runs[method]), RunFolder.read(runs["erm"]), "model", device="cpu",
                        cache_dir=tmp_path)


def test_a_new_method_round_trips_through_a_stored_run_and_rescoring(runs, tmp_path):
    r = rescorer(runs, tmp_path)
    preds = RunFolder.read(runs["nearest-centroid"]).predictions
    test = preds[preds["split"] == "test"]
    ids = test["sample_id"].to_numpy()
    clean = r._score(ids, "noise", 0)  # severity 0: the clean images
    assert isinstance(r.method_model().predictor, CentroidPredictor)  # restored by the method, not by bench/
    np.testing.assert_allclose(clean["expert"], P.proba(test, "model"), atol=1e-6)
    # Corrupted inputs reach the restored predictor: its scores move.
    noisy = r.corrupted(ids, "noise", 4)[0]
    assert np.abs(noisy - clean["expert"]).mean() > 1e-3


def test_a_new_method_declaring_a_discriminator_routes_with_it(runs, tmp_path):
    r = rescorer(runs, tmp_path)
    assert r.resolved_router() == "discriminator"
    preds = RunFolder.read(runs["nearest-centroid"]).predictions
    test = preds[preds["split"] == "test"]
    pred_group, _ = r.routing(test["sample_id"].to_numpy())
    # The routed groups are the method's own nearest group centroids, computed here from the saved weights.
    state = torch.load(runs["nearest-centroid"] / "model.pt", weights_only=True)
    task = r.task()
    rows = r.rows(test["sample_id"].to_numpy())
    own = torch.cdist(centroid_inputs(task.x[rows]), state["group_centroids"]).argmin(1).numpy()
    np.testing.assert_array_equal(pred_group, own)


def test_a_method_without_restore_is_refused_with_one_line(runs, tmp_path):
    r = rescorer(runs, tmp_path, method="unrestorable")
    with pytest.raises(ConfigError, match="method 'unrestorable' cannot restore a model from saved weights"):
        r.method_model()
