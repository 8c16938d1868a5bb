"""Re-scoring stored models: restored weights reproduce the stored predictions, blind routing, corruptions, cache."""

from __future__ import annotations

import numpy as np
import pytest

from noharm.analysis import predictions as P
from noharm.bench.errors import ConfigError
from noharm.bench.stress.run import parse_stress_suite, stress_run_folders, write_outcome
from noharm.bench.stress.rescore import PairRescorer, RunFolder
from noharm.bench.trial import TrialConfig, run_trial, save_trial

TINY = {"epochs": 1, "backbone": "cnn", "batch_size": 128}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ERM and FairSDE on 16 px digits-shift, one epoch each, saved as run folders."""
    root = tmp_path_factory.mktemp("stress-runs")
    out = {}
    for method in ("erm", "fairsde"):
        cfg = TrialConfig(dataset="digits-shift", attribute="style", method=method, seed=0, hparams=TINY,
                          dataset_options={"image_size": 16})
        out[method] = save_trial(run_trial(cfg, device="cpu"), root / method)
    return out


def rescorer(runs, tmp_path, router="auto"):
    return PairRescorer(RunFolder.read(runs["fairsde"]), RunFolder.read(runs["erm"]), "experts", router=router,
                        device="cpu", cache_dir=tmp_path)


def test_restored_models_reproduce_the_stored_predictions(runs, tmp_path):
    r = rescorer(runs, tmp_path)
    preds = RunFolder.read(runs["fairsde"]).predictions
    test = preds[preds["split"] == "test"]
    scores = r._score(test["sample_id"].to_numpy(), "noise", 0)  # severity 0: the clean images
    assert np.allclose(scores["expert"], P.proba(test, "experts"), atol=1e-5)
    erm = RunFolder.read(runs["erm"]).predictions
    assert np.allclose(scores["erm"], P.proba(erm[erm["split"] == "test"], "model"), atol=1e-5)


def test_discriminator_routing_equals_the_routed_candidate(runs, tmp_path):
    r = rescorer(runs, tmp_path)
    assert r.resolved_router() == "discriminator"
    preds = RunFolder.read(runs["fairsde"]).predictions
    rows = preds[preds["split"].isin(["val", "test"])]
    pred_group, routed = r.routing(rows["sample_id"].to_numpy())
    # FairSDE's `routed` candidate is the head of the discriminator's group: re-scoring the experts
    # with the predicted group in place of the true one must give the same scores.
    assert np.allclose(routed, P.proba(rows, "routed"), atol=1e-5)
    assert set(np.unique(pred_group)) <= {0, 1}


def test_corrupted_scores_are_cached(runs, tmp_path):
    ids = RunFolder.read(runs["fairsde"]).predictions.query("split == 'test'")["sample_id"].to_numpy()
    first = rescorer(runs, tmp_path).corrupted(ids, "contrast", 5)
    assert len(list((tmp_path / "stress").glob("*.npz"))) == 1
    again = rescorer(runs, tmp_path)
    second = again.corrupted(ids, "contrast", 5)
    assert again._task is None  # read from the cache: no dataset, no model
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    clean = rescorer(runs, tmp_path)._score(ids, "contrast", 0)["expert"]
    assert not np.allclose(first[0], clean)  # the corruption changed the scores


def test_a_model_that_does_not_reproduce_its_predictions_is_refused(runs, tmp_path):
    import shutil

    copy = tmp_path / "erm-copy"
    shutil.copytree(runs["erm"], copy)
    preds = P.proba(RunFolder.read(copy).predictions, "model")
    table = RunFolder.read(copy).predictions
    table["proba/model/0"], table["proba/model/1"] = preds[:, 1], preds[:, 0]  # as if state were missing
    table.to_parquet(copy / "predictions.parquet")
    r = PairRescorer(RunFolder.read(runs["fairsde"]), RunFolder.read(copy), "experts", device="cpu",
                     cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not reproduce the stored 'model' scores"):
        r.erm_model()


def test_input_router_and_bad_router(runs, tmp_path):
    r = rescorer(runs, tmp_path, router="inputs")
    preds = RunFolder.read(runs["fairsde"]).predictions
    test = preds[preds["split"] == "test"]
    pred_group, _ = r.routing(test["sample_id"].to_numpy())
    assert (pred_group == test["group_id"].to_numpy()).mean() > 0.9  # the style is visible in the pixels
    with pytest.raises(ConfigError, match="unknown router 'oracle'"):
        rescorer(runs, tmp_path, router="oracle")


def test_stress_pair_end_to_end(runs, tmp_path):
    suite = parse_stress_suite({
        "repeats": 20, "selectors": ["greedy", "safe", "blind"],
        "scenarios": [{"kind": "val-size", "severities": [30]},
                      {"kind": "corruption", "corruptions": ["noise"], "severities": [0, 4]}],
    })
    outcome = stress_run_folders(runs["fairsde"], runs["erm"], suite, cache_dir=tmp_path)
    assert outcome.skipped == []
    t = outcome.table
    assert set(t["scenario"]) == {"val-size", "corruption-noise"}
    assert len(t) == 3 * 3 and set(t["strategy"]) == {"greedy", "safe", "blind"}
    noisy = t[(t["scenario"] == "corruption-noise") & (t["severity"] == 4)]
    assert (noisy["repeats"] == 1).all()  # a deterministic shift: one repeat
    # Blind routing accuracy is the share of test rows whose predicted group is their true group.
    b = outcome.blind.query("split == 'test'")
    weighted = (b["routing_accuracy"] * b["n"]).sum() / b["n"].sum()
    assert weighted == pytest.approx(outcome.routing_accuracy["test"])
    clean_blind = t[(t["scenario"] == "corruption-noise") & (t["severity"] == 0) & (t["strategy"] == "blind")]
    assert clean_blind["routing_accuracy"].iloc[0] == pytest.approx(outcome.routing_accuracy["test"])
    paths = write_outcome(outcome, tmp_path / "out")
    assert [p.name for p in paths] == ["stress.parquet", "blind.parquet"]
    assert outcome.summary_metrics()["stress/val-size/greedy/harm_rate_mean"] == t.query(
        "scenario == 'val-size' and strategy == 'greedy'")["harm_rate"].iloc[0]


def test_stress_pair_refuses_mismatched_runs(runs, tmp_path):
    suite = parse_stress_suite({"scenarios": [{"kind": "val-size"}]})
    with pytest.raises(ConfigError, match="is a 'fairsde' run; give an erm run as --erm"):
        stress_run_folders(runs["fairsde"], runs["fairsde"], suite)
    with pytest.raises(ConfigError, match="is not a trial folder"):
        stress_run_folders(runs["fairsde"], tmp_path, suite)
