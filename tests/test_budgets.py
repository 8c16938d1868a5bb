"""A dataset's declared training budget: precedence (set > dataset > method default), recorded source, and
the german collapse it fixes (10 epochs at batch 128 left FairSDE, FairSDE-NCE and decoupled predicting one
class for the Male group)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from noharm.bench.cli import main
from noharm.bench.sweep.keys import trial_key
from noharm.bench.sweep.suite import parse_suite
from noharm.bench.trial import FROM_DATASET, FROM_METHOD, FROM_SET, TrialConfig, run_trial, trial_hparams
from noharm.datasets import DATASETS
from noharm.datasets.german import German
from noharm.methods import METHODS
from noharm.methods.hparams import HparamError
from noharm.methods.training import TRAINING_HPARAMS

GERMAN_BUDGET = {"epochs": 30, "batch_size": 32}


def test_german_declares_its_budget_and_adult_none():
    assert German.training_budget == GERMAN_BUDGET
    assert DATASETS.get("adult").training_budget == {}
    assert DATASETS.get("german")().summary()["training_budget"] == GERMAN_BUDGET


def test_dataset_budget_beats_the_method_default():
    values, sources = trial_hparams("fairsde", "german")
    assert (values["epochs"], values["batch_size"]) == (30, 32)
    assert sources["epochs"] == sources["batch_size"] == FROM_DATASET
    assert values["lr"] == METHODS.get("fairsde").hparams["lr"].default and sources["lr"] == FROM_METHOD
    # A dataset without a budget leaves the method's defaults.
    values, sources = trial_hparams("fairsde", "adult")
    assert (values["epochs"], values["batch_size"]) == (10, 128)
    assert sources["epochs"] == sources["batch_size"] == FROM_METHOD


def test_a_set_value_beats_the_dataset_budget_name_by_name():
    values, sources = trial_hparams("decoupled", "german", {"epochs": "5"})  # --set gives text: cast here
    assert values["epochs"] == 5 and sources["epochs"] == FROM_SET
    assert values["batch_size"] == 32 and sources["batch_size"] == FROM_DATASET
    values, sources = trial_hparams("decoupled", "german", {"batch_size": 128, "epochs": 10})
    assert (values["epochs"], values["batch_size"]) == (10, 128)  # equal to the method default, still set
    assert sources["epochs"] == sources["batch_size"] == FROM_SET


def test_bad_set_value_and_bad_declared_budget_fail_with_one_line(monkeypatch):
    with pytest.raises(HparamError, match="'epochs' must be >= 1"):
        trial_hparams("erm", "german", {"epochs": 0})
    # A budget name a method does not declare is skipped for that method; a bad value names the dataset.
    monkeypatch.setattr(German, "training_budget", {"epochs": 30, "not_an_hparam": 1})
    assert trial_hparams("erm", "german")[0]["epochs"] == 30
    monkeypatch.setattr(German, "training_budget", {"epochs": 0})
    with pytest.raises(HparamError, match="dataset 'german' declares a bad training_budget: .*'epochs'"):
        trial_hparams("erm", "german")


def test_every_declared_budget_is_valid_for_every_method():
    for dataset in DATASETS.names():
        budget = DATASETS.get(dataset).training_budget
        assert set(budget) <= set(TRAINING_HPARAMS), (dataset, budget)  # names every trained method declares
        for method in METHODS.names():
            trial_hparams(method, dataset)  # raises on a value outside a method's valid range


def test_trial_key_follows_the_resolved_budget():
    base = TrialConfig(dataset="german", attribute="sex", method="fairsde")
    explicit = TrialConfig(dataset="german", attribute="sex", method="fairsde", hparams=dict(GERMAN_BUDGET))
    old_defaults = TrialConfig(dataset="german", attribute="sex", method="fairsde",
                               hparams={"epochs": 10, "batch_size": 128})
    assert trial_key(base) == trial_key(explicit) != trial_key(old_defaults)


def suite_with(german_hparams: dict | None = None, trials: int = 2):
    entry = {"name": "german", "attributes": ["sex"]}
    if german_hparams is not None:
        entry["hparams"] = german_hparams
    return parse_suite({"name": "t", "datasets": [entry, {"name": "adult", "attributes": ["sex"]}],
                        "methods": ["fairsde"], "seeds": [0], "search": {"trials": trials}})


def test_suite_trials_get_the_dataset_budget_unless_the_suite_sets_it():
    from noharm.bench.sweep import grid
    from noharm.bench.sweep.trials import trial_params

    cells = {c.label: c for c in grid.cells(suite_with())}
    searched = {"lr": 0.01, "weight_decay": 1e-3}
    german = grid.trial_spec(suite_with(), cells["german"], searched, seed=0)
    assert german.sources["epochs"] == german.sources["batch_size"] == FROM_DATASET  # left to the rule
    params = trial_params(german)
    assert (params["epochs"], params["batch_size"], params["lr"]) == (30, 32, 0.01)
    assert params["trial.budget"] == "epochs=30 (dataset german), batch_size=32 (dataset german)"
    assert trial_params(grid.trial_spec(suite_with(), cells["adult"], searched, 0))["trial.budget"] == (
        "epochs=10 (method default), batch_size=128 (method default)")
    # A search result read back from MLflow holds every resolved value, method defaults included: only its
    # searched names count, so the default epochs=10 stored there cannot mask the dataset's budget.
    full, _ = trial_hparams("fairsde", "adult", searched)
    assert trial_key(grid.trial_spec(suite_with(), cells["german"], full, 0)) == trial_key(german)
    # The suite's value wins over the dataset's.
    suite = suite_with({"epochs": 3})
    cell = next(c for c in grid.cells(suite) if c.label == "german")
    params = trial_params(grid.trial_spec(suite, cell, searched, 0))
    assert (params["epochs"], params["batch_size"]) == (3, 32)
    assert params["trial.budget"] == "epochs=3 (set for this trial), batch_size=32 (dataset german)"


def test_tabular_suite_leaves_german_to_its_declared_budget():
    from pathlib import Path

    from noharm.bench.sweep.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "bench" / "suites" / "tabular.yaml")
    german = next(d for d in suite.datasets if d.name == "german")
    assert "epochs" not in german.hparams and "batch_size" not in german.hparams
    assert "epochs" not in suite.hparams and "batch_size" not in suite.hparams


def test_cli_trial_prints_and_saves_the_budget_and_its_source(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["trial", "--dataset", "german", "--attribute", "sex", "--method", "erm", "--set", "epochs=1",
                 "--quiet", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "budget: epochs=1 (set for this trial), batch_size=32 (dataset german)" in text
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert notes["budget"] == {"epochs": {"value": 1, "source": FROM_SET},
                               "batch_size": {"value": 32, "source": FROM_DATASET}}
    config = json.loads((out / "config.json").read_text())
    assert config["hparams"]["epochs"] == 1 and config["sources"]["epochs"] == FROM_SET
    assert config["resolved_hparams"]["batch_size"] == 32 and config["sources"]["batch_size"] == FROM_DATASET


@pytest.mark.parametrize("method", ["fairsde", "fairsde-nce", "decoupled"])
def test_german_experts_with_defaults_predict_both_classes_in_every_group(method):
    """The collapse this budget fixes: with 50 steps these experts predicted one class for Male."""
    result = run_trial(TrialConfig(dataset="german", attribute="sex", method=method), device="cpu")
    test = result.predictions[result.predictions["split"] == "test"]
    from noharm.analysis import predictions as P

    pred = P.proba(test, "experts").argmax(1)
    y = test["y"].to_numpy()
    for group in ("Female", "Male"):
        mask = (test["group"] == group).to_numpy()
        share = np.bincount(pred[mask], minlength=2) / mask.sum()
        assert share.min() >= 0.05, (method, group, share)  # both classes, not a trickle of one
        recall = [(pred[mask & (y == c)] == c).mean() for c in (0, 1)]
        assert np.mean(recall) >= 0.55, (method, group, recall)  # balanced accuracy above chance
    assert result.notes["budget"] == {"epochs": {"value": 30, "source": FROM_DATASET},
                                      "batch_size": {"value": 32, "source": FROM_DATASET}}


def test_datasets_list_shows_a_declared_budget(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    german = out[out.index("german  ["):]
    german = german[:german.index("\n", german.index("source:"))]
    assert "budget:     epochs=30, batch_size=32 (for every method, unless --set or a suite sets it)" in german
    adult = out[out.index("adult  ["):out.index("bank  [")]
    assert "budget:" not in adult
