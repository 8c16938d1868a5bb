"""Artifacts in proportion: which sweep runs keep model.pt (suite `keep_models`), and training rows on request."""

from __future__ import annotations

from dataclasses import replace

import pytest

from noharm.bench.sweep.keys import trial_key
from noharm.bench.sweep.suite import parse_suite
from noharm.bench.sweep.trials import Job, execute, keeps_model
from noharm.bench.tracking import Tracker, default_uri
from noharm.bench.trial import TrialConfig

pytestmark = pytest.mark.filterwarnings("ignore")

CFG = TrialConfig(dataset="digits-shift", attribute="style", method="erm", seed=0,
                  hparams={"epochs": 1, "backbone": "cnn", "batch_size": 256}, dataset_options={"image_size": 16})


def suite(**extra):
    return parse_suite({"name": "s", "datasets": [{"name": "digits-shift", "attributes": ["style"]}],
                        "methods": ["erm"], "seeds": [0, 1], "search": {"trials": 1}, **extra})


@pytest.mark.parametrize("keep, kept", [("evaluate", {"evaluate"}), ("all", {"search", "evaluate"}), ("none", set())])
def test_keeps_model(keep, kept):
    assert {s for s in ("search", "evaluate") if keeps_model({"keep_models": keep}, s)} == kept


def test_suite_options_default_and_validation():
    s = suite()
    assert s.keep_models == "evaluate" and s.train_predictions is False
    assert suite(keep_models="all", train_predictions=True).train_predictions is True
    from noharm.bench.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_models"):
        suite(keep_models="some")


def test_train_predictions_reach_the_trial_config():
    from noharm.bench.sweep import grid

    s = suite(train_predictions=True)
    cell = grid.cells(s)[0]
    assert grid.trial_spec(s, cell, {}, 0).train_predictions is True
    assert grid.trial_spec(suite(), cell, {}, 0).train_predictions is False


@pytest.mark.parametrize("keep", ["evaluate", "all", "none"])
def test_search_seed_copies_only_when_search_runs_have_models(keep):
    from noharm.bench.sweep.searcher import SweepSearcher

    s = suite(keep_models=keep)
    searcher = SweepSearcher(s, {}, {})
    cell = next(iter(searcher.cells.values()))
    job = searcher._job("evaluate", cell, {}, 0)
    searcher.best[cell.id] = ({}, "RUN", job.key)
    searcher.queue.clear()
    searcher._enqueue_evaluate(cell)
    copies = {q.trial.seed: q.copy_from for q in searcher.queue if q.stage == "evaluate"}
    assert copies == {0: None if keep == "evaluate" else "RUN", 1: None}


def test_sweep_runs_store_model_pt_by_stage(tmp_path):
    tracker = Tracker.open(default_uri(tmp_path), "e")
    context = {"uri": tracker.uri, "experiment_id": tracker.experiment_id, "suite": "s", "invocation": "i",
               "git_commit": "c", "code_version": "v", "retries": 0, "device": "cpu", "keep_models": "evaluate"}
    files = {}
    for stage, seed in (("search", 0), ("evaluate", 1)):
        cfg = replace(CFG, seed=seed)
        job = Job(stage=stage, name=stage, key=trial_key(cfg), cell="c", label="c", trial=cfg)
        result = execute(job, context)
        assert result["failed"] == 0, result["error"]
        files[stage] = {a.path for a in tracker.client.list_artifacts(result["run_id"])}
    assert files["search"] == {"predictions.parquet", "config.json", "metrics.json"}
    assert files["evaluate"] == files["search"] | {"model.pt"}
