"""The report's fast paths give what the slow paths gave (issue 17.4: the report at paper scale, output unchanged).

- The store read with a few SELECTs (`noharm.analysis.collect.sqlite_experiment_runs`) against MLflow's search API: the
  same runs, the same frames, the same report bytes, without importing MLflow; an unknown schema falls back to
  the API.
- Stress artifacts read in place against downloaded through MLflow.
- The plots against the hashes of the fixed store's plots as written before the speed-up
  (tests/golden/analysis/plots.sha256). After an intended change of the figures, regenerate them with

      NOHARM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_fast_path.py -q

  and look at the new PNGs before committing.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import noharm.analysis.collect as collect_mod
from noharm.analysis.collect import (StoredRun, collect, local_artifact_dir, search_all, sqlite_experiment_runs, sqlite_path,
                              stored_run)
from tests.test_analysis_report import _hashes
from tests.test_analysis_store import analysis_collection, analysis_report, analysis_store, new_experiment  # noqa: F401

GOLDEN_PLOTS = Path(__file__).parent / "golden" / "analysis" / "plots.sha256"
FRAMES = ("tidy", "runs", "stress", "reference", "trials", "params")



def _plain(run: StoredRun) -> tuple:
    """A run with NaN spelled out, so that equal runs compare equal."""
    metrics = {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in run.metrics.items()}
    return run.run_id, run.status, run.start_time, run.artifact_uri, run.tags, run.params, metrics


@pytest.fixture
def search_api_only(monkeypatch):
    """collect() as before the fast path: every store through MLflow's search API."""
    monkeypatch.setattr(collect_mod, "sqlite_experiment_runs", lambda db, experiment: None)


def test_the_fixed_store_is_read_by_sql_without_importing_mlflow(analysis_store, analysis_collection):
    uri = analysis_store[0]
    found = sqlite_experiment_runs(sqlite_path(uri), "fixed")
    assert found is not None and found[0] == analysis_collection.experiment_id
    assert len(found[1]) == 30 + 36 + 5 + 3 + 1  # evaluate, compose, stress, search, failed
    code = ("import sys; from noharm.analysis.collect import collect; "
            f"col = collect('fixed', {uri!r}); print(len(col.tidy), 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(analysis_collection.tidy)), "False"]


def test_sql_read_gives_the_frames_of_the_search_api(analysis_store, analysis_collection, search_api_only):
    slow = collect("fixed", analysis_store[0])
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(analysis_collection, name), getattr(slow, name), check_exact=True)
    assert analysis_collection.notes == slow.notes
    assert len(slow.tidy) > 1000 and len(slow.stress) == 30


def test_sql_read_and_search_api_report_the_same_bytes(analysis_store, analysis_report, tmp_path, search_api_only):
    from noharm.analysis.report import write_report

    write_report("fixed", analysis_store[0], tmp_path / "slow")
    assert _hashes(tmp_path / "slow") == _hashes(analysis_report[1])


def test_sql_read_matches_the_search_api_run_by_run(analysis_store):
    from mlflow.entities import Metric, Param, RunTag

    uri = analysis_store[0]
    client, exp, name = new_experiment(uri, "fast-path")
    other, other_exp, _ = new_experiment(uri, "fast-path-other")
    kept = []
    for i, status in enumerate(("FINISHED", "FAILED", "RUNNING")):
        run = client.create_run(exp, run_name=f"r{i}", tags={"noharm.stage": "evaluate", "noharm.seed": str(i)})
        client.log_batch(run.info.run_id, metrics=[
            Metric("test/model/acc", 0.5 + i, 1000, 0), Metric("test/model/acc", 0.25 * i, 2000, 1),  # latest wins
            Metric("test/model/auc", float("nan"), 1000, 0), Metric("cost/peak", float("inf"), 1000, 0),
            Metric("test/model/neg", -float("inf"), 1000, 0)],
            params=[Param("lr", f"0.{i}1"), Param("optimizer", "sgd")], tags=[RunTag("empty", "")])
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        kept.append(run.info.run_id)
    gone = client.create_run(exp, run_name="deleted").info.run_id
    client.delete_run(gone)
    other.create_run(other_exp, run_name="elsewhere")
    db = sqlite_path(uri)
    before = db.read_bytes()
    exp_id, fast = sqlite_experiment_runs(db, name)
    fast = sorted(fast, key=lambda r: r.run_id)
    slow = sorted((stored_run(r) for r in search_all(client, exp)), key=lambda r: r.run_id)
    assert db.read_bytes() == before  # read-only
    assert exp_id == exp
    assert [_plain(r) for r in fast] == [_plain(r) for r in slow]
    assert sorted(r.run_id for r in fast) == sorted(kept)
    one = next(r for r in fast if r.tags["noharm.seed"] == "2")
    assert one.metrics["test/model/acc"] == 0.5 and math.isnan(one.metrics["test/model/auc"])
    assert one.metrics["cost/peak"] == 1.7976931348623157e308 == -one.metrics["test/model/neg"]  # MLflow's inf
    assert one.params == {"lr": "0.21", "optimizer": "sgd"} and one.status == "RUNNING"


def test_an_unknown_schema_falls_back_to_the_search_api(tmp_path):
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT, status TEXT)")
    assert sqlite_experiment_runs(odd, "fixed") is None
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert sqlite_experiment_runs(junk, "fixed") is None
    assert sqlite_experiment_runs(tmp_path / "missing.db", "fixed") is None


def test_a_missing_or_deleted_experiment_is_left_to_mlflow(analysis_store):
    from mlflow.tracking import MlflowClient

    uri = analysis_store[0]
    assert sqlite_experiment_runs(sqlite_path(uri), "no-such-experiment") is None
    client, exp, name = new_experiment(uri, "deleted")
    MlflowClient(tracking_uri=uri).delete_experiment(exp)
    assert sqlite_experiment_runs(sqlite_path(uri), name) is None


def test_stress_artifacts_read_in_place_equal_the_downloaded_ones(analysis_store, analysis_collection, monkeypatch):
    monkeypatch.setattr(collect_mod, "local_artifact_dir", lambda uri: None)  # every artifact through MLflow
    downloaded = collect("fixed", analysis_store[0]).stress
    pd.testing.assert_frame_equal(downloaded, analysis_collection.stress, check_exact=True)


def test_local_artifact_dir():
    assert local_artifact_dir("file:///tmp/a%20b/artifacts/1") == Path("/tmp/a b/artifacts/1")
    assert local_artifact_dir("file://localhost/srv/x") == Path("/srv/x")
    assert local_artifact_dir("/srv/mlruns/0/abc/artifacts") == Path("/srv/mlruns/0/abc/artifacts")
    for remote in ("s3://bucket/x", "mlflow-artifacts:/0/abc/artifacts", "http://127.0.0.1:5000/x",
                   "file://otherhost/x"):
        assert local_artifact_dir(remote) is None, remote


def test_plots_are_the_bytes_written_before_the_speed_up(analysis_report):
    got = "".join(f"{digest}  {name.split('/', 1)[1]}\n" for name, digest in _hashes(analysis_report[1]).items()
                  if name.startswith("plots/"))
    if os.environ.get("NOHARM_UPDATE_GOLDEN") == "1":
        GOLDEN_PLOTS.write_text(got)
    assert got == GOLDEN_PLOTS.read_text()
