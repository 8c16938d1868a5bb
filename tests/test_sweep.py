"""Sweeps in one shared local Ray session: the MLflow layout, search -> evaluate -> compose, reruns, failures."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter

import pytest

from tests.plugins import install_testkit, write_suite

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray (127.0.0.1, 2 CPUs) for the module, with the test plugin visible to driver and workers."""
    import ray

    from noharm.datasets import DATASETS
    from noharm.methods import METHODS

    site = install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit")
    before = {registry: set(registry._items) for registry in (METHODS, DATASETS)}
    saved_env = {k: os.environ.get(k) for k in ("PYTHONPATH",)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(site), os.environ.get("PYTHONPATH", "")] if p)
    sys.path.insert(0, str(site))
    for registry in (METHODS, DATASETS):
        registry._plugins_loaded = False  # look again: the testkit's entry points are on the path now
        registry.load_plugins()
    # Ray keeps Unix sockets in its temp folder: keep that path short.
    tmp = tempfile.mkdtemp(prefix="nh-ray-", dir="/tmp")
    ray.init(address="local", num_cpus=2, log_to_driver=False, logging_level="error", include_dashboard=False,
             _temp_dir=tmp)
    yield site
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    sys.path.remove(str(site))
    for k, v in saved_env.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    for registry, names in before.items():  # everything the testkit registered, so another module can load it again
        for name in set(registry._items) - names:
            registry._items.pop(name, None)
    sys.modules.pop("noharm_sweep_testkit", None)


def tracker_of(outcome):
    from noharm.bench.tracking import Tracker

    return Tracker(outcome.tracking_uri, outcome.experiment_id)


def by_stage(runs):
    return Counter((r.data.tags["noharm.stage"], r.info.status) for r in runs)


@pytest.fixture(scope="module")
def digits_sweep(ray_session, tmp_path_factory):
    """A real-data sweep: digits-shift (16 px, CNN, 1 epoch), ERM + group-models, 2 seeds, 2 search trials, 2 selectors."""
    from noharm.bench.sweep.suite import load_suite
    from noharm.bench.sweep.run import run_suite

    tmp = tmp_path_factory.mktemp("digits")
    path = write_suite(tmp / "digits.yaml", name="digits", seeds=[0, 1], methods=["erm", "group-models"],
                       datasets=[{"name": "digits-shift", "attributes": ["style"], "options": {"image_size": 16},
                                  "hparams": {"backbone": "cnn", "epochs": 1, "batch_size": 256}}],
                       search={"trials": 2, "objective": "val/worst_group_acc"},
                       selectors=["greedy", "ip-utility"], max_concurrent=2)
    suite = load_suite(path)
    outcome = run_suite(suite, tmp / "out", quiet=True)
    return suite, outcome


def test_sweep_runs_every_stage_into_mlflow(digits_sweep):
    suite, outcome = digits_sweep
    assert outcome.ok, outcome.failures
    runs = tracker_of(outcome).runs(suite="digits")
    # 2 cells x 2 search trials; 2 cells x 2 seeds evaluated; 1 composed method x 2 seeds x 2 strategies.
    assert by_stage(runs) == {("search", "FINISHED"): 4, ("evaluate", "FINISHED"): 4, ("compose", "FINISHED"): 4}
    assert {k: (v.done, v.skipped, v.failed) for k, v in outcome.counts.items()} == {
        "search": (4, 0, 0), "evaluate": (4, 0, 0), "compose": (2, 0, 0)}
    assert (outcome.out / "mlflow.db").is_file() and (outcome.out / "summary.csv").is_file()
    assert outcome.ui_command == f"mlflow ui --backend-store-uri sqlite:///{outcome.out / 'mlflow.db'}"


def test_trial_runs_have_tags_params_metrics_artifacts(digits_sweep):
    from noharm.bench.sweep.keys import CODE_VERSION

    suite, outcome = digits_sweep
    tracker = tracker_of(outcome)
    for run in tracker.runs(suite="digits", stage="evaluate"):
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["noharm.suite"] == "digits" and tags["noharm.dataset"] == "digits-shift"
        assert tags["noharm.attribute"] == "style" and tags["noharm.target"] == "binary"
        assert tags["noharm.seed"] in ("0", "1") and len(tags["noharm.key"]) == 20
        assert tags["noharm.code_version"] == CODE_VERSION and tags["noharm.git_commit"]
        assert json.loads(tags["noharm.groups"]) == ["shifted", "standard"]
        method = tags["noharm.method"]
        assert tags["noharm.candidates"] == ("experts" if method == "group-models" else "model")
        assert params["backbone"] == "cnn" and params["epochs"] == "1" and params["batch_size"] == "256"
        assert params["trial.objective"] == "val/worst_group_acc" and "lr" in params and "weight_decay" in params
        cand = tags["noharm.candidates"]
        for split in ("val", "test"):
            for name in ("acc", "auc", "acc/worst", "acc/gap", "acc/group:shifted", "auc/group:standard",
                         "n/group:shifted"):
                assert f"{split}/{cand}/{name}" in metrics
        assert metrics["cost/wall_seconds"] > 0 and metrics["objective"] == metrics[f"val/{cand}/acc/worst"]
        files = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
        assert files == {"predictions.parquet", "model.pt", "config.json", "metrics.json"}
        preds = tracker.load_predictions(run.info.run_id)
        assert len(preds) == 718 and set(preds["split"]) == {"val", "test"}  # no training rows by default
        # The stored predictions reproduce the logged metrics.
        from noharm.bench.trial import score_predictions

        rescored = score_predictions(preds, ["shifted", "standard"])
        assert rescored[f"test/{cand}/acc/group:shifted"] == pytest.approx(metrics[f"test/{cand}/acc/group:shifted"])


def test_search_picks_best_and_seed0_reruns_it_to_keep_a_model(digits_sweep):
    """keep_models: evaluate (the default): search runs store no model.pt, so the search seed's evaluate
    run retrains the best settings (same key, same numbers) instead of copying the search run."""
    suite, outcome = digits_sweep
    tracker = tracker_of(outcome)
    for method in ("erm", "group-models"):
        search = [r for r in tracker.runs(suite="digits", stage="search") if r.data.tags["noharm.method"] == method]
        assert len(search) == 2 and {r.data.tags["noharm.seed"] for r in search} == {"0"}
        assert len({r.data.params["lr"] for r in search}) == 2  # Optuna proposed two settings
        best = max(search, key=lambda r: (r.data.metrics["objective"], -r.info.start_time))
        evals = {r.data.tags["noharm.seed"]: r for r in tracker.runs(suite="digits", stage="evaluate")
                 if r.data.tags["noharm.method"] == method}
        assert "noharm.copied_from" not in evals["0"].data.tags
        assert evals["0"].data.tags["noharm.key"] == best.data.tags["noharm.key"]
        same = [k for k in best.data.metrics if not k.startswith("cost/")]
        assert {k: evals["0"].data.metrics[k] for k in same} == {k: best.data.metrics[k] for k in same}
        for run in search:
            assert "model.pt" not in {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
        assert "noharm.copied_from" not in evals["1"].data.tags
        for name in ("lr", "weight_decay"):  # seed 1 ran the best settings
            assert evals["1"].data.params[name] == best.data.params[name]
        assert evals["1"].data.tags["noharm.key"] != best.data.tags["noharm.key"]


def test_compose_runs_match_recomputed_selection(digits_sweep):
    from noharm.bench.compose import compose
    from noharm.bench.trial import score_predictions

    suite, outcome = digits_sweep
    tracker = tracker_of(outcome)
    runs = tracker.runs(suite="digits", stage="compose")
    assert {(r.data.tags["noharm.strategy"], r.data.tags["noharm.seed"]) for r in runs} == {
        (s, seed) for s in ("greedy", "ip-utility") for seed in ("0", "1")}
    for run in runs:
        tags = run.data.tags
        method_run, erm_run = tags["noharm.composed_from"].split(",")
        assert tracker.get(method_run).data.tags["noharm.method"] == "group-models"
        assert tracker.get(erm_run).data.tags["noharm.method"] == "erm"
        assert tracker.get(erm_run).data.tags["noharm.seed"] == tags["noharm.seed"]
        assert tags["noharm.method"] == "group-models" and tags["noharm.candidates"] == \
            f"experts,erm,selected:{tags['noharm.strategy']}"
        strategy = tags["noharm.strategy"]
        composed, report = compose(tracker.load_predictions(method_run), tracker.load_predictions(erm_run),
                                   [strategy], metric="accuracy", candidate="experts")
        expected = score_predictions(composed, ["shifted", "standard"])
        for key in (f"test/selected:{strategy}/acc", f"val/selected:{strategy}/acc/worst",
                    f"test/selected:{strategy}/acc/group:shifted", "test/erm/acc", "test/experts/auc"):
            assert run.data.metrics[key] == pytest.approx(expected[key]), key
        for g in ("shifted", "standard"):
            assert run.data.metrics[f"selection/use_expert/group:{g}"] == float(report[strategy]["use_expert"][g])
            # Each group's selected accuracy is exactly the expert's or ERM's.
            sel = run.data.metrics[f"test/selected:{strategy}/acc/group:{g}"]
            assert sel in (pytest.approx(run.data.metrics[f"test/experts/acc/group:{g}"]),
                           pytest.approx(run.data.metrics[f"test/erm/acc/group:{g}"]))
        files = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
        assert files == {"predictions.parquet", "selection.json"}


def test_comparison_table_against_erm(digits_sweep):
    suite, outcome = digits_sweep
    table = outcome.table
    assert set(table["method"]) == {"erm", "group-models", "group-models + greedy", "group-models + ip-utility"}
    erm = table[table["method"] == "erm"].iloc[0]
    assert erm["harmed_groups"] == 0 and erm["seeds"] == 2
    frame = tracker_of(outcome).frame("digits", stages=("evaluate",))
    accs = frame[frame["method"] == "erm"]["test/model/acc"]
    assert erm["acc"] == pytest.approx(accs.mean())
    assert all(0 <= v <= 2 for v in table["harmed_groups"])


def test_rerun_skips_everything(digits_sweep):
    from noharm.bench.sweep.run import run_suite

    suite, outcome = digits_sweep
    again = run_suite(suite, outcome.out, quiet=True)
    assert again.ok
    assert {k: (v.done, v.skipped) for k, v in again.counts.items()} == {
        "search": (0, 4), "evaluate": (0, 4), "compose": (0, 2)}
    runs = tracker_of(again).runs(suite="digits")
    assert len(runs) == 12 and Counter(r.info.status for r in runs) == {"FINISHED": 12}


def test_outcome_rebuilt_from_mlflow_as_under_ray_client(digits_sweep):
    """Under Ray Client the searcher runs on the cluster; the driver rebuilds the outcome from MLflow."""
    from noharm.bench.sweep.run import searcher_from_store

    suite, outcome = digits_sweep
    tracker = tracker_of(outcome)
    invocation = tracker.runs(suite="digits", stage="evaluate")[0].data.tags["noharm.invocation"]
    rebuilt = searcher_from_store(suite, tracker, invocation)
    assert rebuilt.is_done() and not rebuilt.failures
    assert {k: (v.planned, v.skipped) for k, v in rebuilt.counts.items()} == {
        "search": (4, 4), "evaluate": (4, 4), "compose": (2, 2)}


def test_failing_plugin_method_is_recorded_and_the_rest_finishes(ray_session, tmp_path, capsys):
    from noharm.bench.cli import main
    from noharm.bench.tracking import Tracker

    path = write_suite(tmp_path / "fails.yaml", name="fails", seeds=[0, 1],
                       methods=["tiny-erm", "always-fails", "group-models"],
                       datasets=[{"name": "tiny-blobs", "attributes": ["side"]}],
                       hparams={"epochs": 2, "hidden": 16}, search={"trials": 0},
                       selectors=["greedy"], selection={"wrap": "all"}, retries=1, max_concurrent=2)
    out = tmp_path / "out"
    code = main(["run", str(path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "failed or could not run" in err
    assert "evaluate tiny-blobs/side/always-fails s0: RuntimeError: always-fails: this test method fails on purpose" in err
    assert "compose tiny-blobs/side/always-fails s1: not run: evaluate of tiny-blobs/side/always-fails failed" in err
    assert "rerun the same command" in err

    from mlflow.tracking import MlflowClient

    exp = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name("fails")
    tracker = Tracker(f"sqlite:///{out / 'mlflow.db'}", exp.experiment_id)
    runs = tracker.runs(suite="fails")
    status = Counter((r.data.tags["noharm.method"], r.data.tags["noharm.stage"], r.info.status) for r in runs)
    # ERM was not listed as such: tiny-erm is just a method; ERM joins as the selectors' reference.
    assert status[("always-fails", "evaluate", "FAILED")] == 2
    assert status[("group-models", "evaluate", "FINISHED")] == 2 and status[("erm", "evaluate", "FINISHED")] == 2
    assert status[("tiny-erm", "evaluate", "FINISHED")] == 2
    assert status[("group-models", "compose", "FINISHED")] == 2 and status[("tiny-erm", "compose", "FINISHED")] == 2
    assert not any(m == "always-fails" and s == "compose" for m, s, _ in status)
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert failed.data.tags["noharm.error"] == "RuntimeError: always-fails: this test method fails on purpose"
    assert failed.data.tags["noharm.attempts"] == "2"  # the first try and `retries: 1`
    from noharm.bench.sweep.suite import load_suite
    from noharm.bench.sweep.run import searcher_from_store

    rebuilt = searcher_from_store(load_suite(path), tracker, failed.data.tags["noharm.invocation"])
    assert sorted((f.stage, f.what) for f in rebuilt.failures) == [
        ("evaluate", "tiny-blobs/side/always-fails s0"), ("evaluate", "tiny-blobs/side/always-fails s1")]
    assert rebuilt.counts["evaluate"].failed == 2
    with tempfile.TemporaryDirectory() as tmp:
        text = tracker.download(failed.info.run_id, "traceback.txt", tmp).read_text()
    assert "attempt 1 of 2" in text and "attempt 2 of 2" in text and "fails on purpose" in text
    assert "Traceback (most recent call last)" in text


def test_progress_line_and_failure_lines(capsys):
    from types import SimpleNamespace

    from noharm.bench.sweep.progress import Progress, status_line
    from noharm.bench.sweep.searcher import Failure, StageCount

    counts = {"search": StageCount(planned=6, done=4, running=1, skipped=1),
              "evaluate": StageCount(planned=10, done=2, failed=1, blocked=1, skipped=3, running=1),
              "compose": StageCount(planned=4)}
    line = status_line(counts, 151)
    assert line == ("[ 2:31] 6 done, 2 running, 2 failed, 6 pending (4 already in MLflow) | "
                    "search 5/6 evaluate 7/10 compose 0/4")
    assert status_line(counts, 3725).startswith("[1:02:05] ")
    searcher = SimpleNamespace(counts=counts, failures=[Failure("evaluate", "adult/sex/x s0", "ValueError: bad")])
    progress = Progress(searcher, interval=0)
    progress.show()
    progress.finish()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "FAILED evaluate adult/sex/x s0: ValueError: bad"
    assert err[1].endswith("6 done, 2 running, 2 failed, 6 pending (4 already in MLflow) | "
                           "search 5/6 evaluate 7/10 compose 0/4")
    assert sum("FAILED" in line for line in err) == 1  # each failure is shown once
