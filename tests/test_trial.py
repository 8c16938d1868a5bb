"""One trial end to end: the spine's contract."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from noharm.analysis import predictions as P
from noharm.bench.trial import TrialConfig, run_trial, save_trial

FAST_ADULT = {"epochs": 2, "batch_size": 256}


@pytest.fixture(scope="module")
def adult_result():
    return run_trial(TrialConfig(dataset="adult", attribute="sex", method="erm", seed=0, hparams=FAST_ADULT), device="cpu")


def test_adult_erm_reaches_expected_accuracy(adult_result):
    m = adult_result.metrics
    assert m["test/model/acc"] >= 0.84
    assert 0.88 < m["test/model/auc"] < 0.95
    assert adult_result.group_names == ("Female", "Male")
    # Women earn > 50K less often: ERM is more accurate on them (a known Adult pattern).
    assert m["test/model/acc/group:Female"] > m["test/model/acc/group:Male"]


def test_metrics_equal_sklearn_on_saved_predictions(adult_result, tmp_path):
    out = save_trial(adult_result, tmp_path / "run")
    preds = pd.read_parquet(out / "predictions.parquet")
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    test = preds[preds["split"] == "test"]
    proba = P.proba(test, "model")
    for name in ("Female", "Male"):
        rows = (test["group"] == name).to_numpy()
        y = test["y"].to_numpy()[rows]
        assert saved[f"test/model/acc/group:{name}"] == pytest.approx(accuracy_score(y, proba[rows].argmax(1)), abs=1e-12)
        assert saved[f"test/model/auc/group:{name}"] == pytest.approx(roc_auc_score(y, proba[rows, 1]), abs=1e-9)
    accs = [saved[f"test/model/acc/group:{g}"] for g in ("Female", "Male")]
    assert saved["test/model/acc/worst"] == pytest.approx(min(accs))
    assert saved["test/model/acc/gap"] == pytest.approx(max(accs) - min(accs))
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "adult" and config["resolved_hparams"]["epochs"] == 2
    assert set(preds.columns) >= {"sample_id", "split", "y", "group", "group_id", "proba/model/0", "proba/model/1"}
    # Validation and test only (45,222 rows minus the 24,129 training rows), stored as float32.
    assert len(preds) == 21093 and set(preds["split"]) == {"val", "test"} and (out / "model.pt").is_file()
    assert (preds[["proba/model/0", "proba/model/1"]].dtypes == np.float32).all()
    cost = json.loads((out / "metrics.json").read_text())["cost"]
    assert cost["train_samples_per_second"] > 0 and cost["peak_memory_mb"] > 0


def test_same_seed_same_numbers():
    cfg = TrialConfig(dataset="digits-shift", attribute="style", method="erm", seed=1,
                      hparams={"epochs": 2, "backbone": "cnn", "batch_size": 64}, dataset_options={"image_size": 16})
    a, b = run_trial(cfg, device="cpu"), run_trial(cfg, device="cpu")
    assert a.metrics == b.metrics
    assert np.array_equal(P.proba(a.predictions, "model"), P.proba(b.predictions, "model"))


def test_best_epoch_is_chosen_on_validation_only(monkeypatch):
    """The test split never reaches the objective: its rows are not scored before the end."""
    seen = []
    from noharm.bench import trial as trial_module

    original = trial_module.make_objective

    def spy(name, y, groups, names):
        seen.append(len(y))
        return original(name, y, groups, names)

    monkeypatch.setattr(trial_module, "make_objective", spy)
    res = run_trial(TrialConfig(dataset="digits-shift", attribute="style", method="erm",
                                hparams={"epochs": 1, "backbone": "cnn"}, dataset_options={"image_size": 16}), device="cpu")
    n_val = int((res.predictions["split"] == "val").sum())
    assert seen == [n_val]


def test_save_is_all_or_nothing(adult_result, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("torch.save", boom)
    with pytest.raises(OSError):
        save_trial(adult_result, out)
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no staging folder left behind


def test_existing_output_is_not_overwritten_without_force(adult_result, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        save_trial(adult_result, out)
    save_trial(adult_result, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "metrics.json").exists()
