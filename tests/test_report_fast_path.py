"""The report's fast paths give what the slow paths gave (issue 17.4: the report at paper scale, output unchanged).

- The store read with a few SELECTs (`noharm.analysis.store_readers.sqlite_experiment_runs`) against MLflow's search API: the
  same runs, the same frames, the same report bytes, without importing MLflow; an unknown schema falls back to
  the API.
- The runs read from a tracking server as plain JSON (`store_readers.server_runs`, a real `mlflow server` on
  127.0.0.1) and from a PostgreSQL store by SQL (`store_readers.database_experiment_runs`; skipped without the
  `pgserver` wheel) against MLflow's search API on the same store: the same report bytes.
- Stress artifacts read in place against downloaded through MLflow.
- The plots against the hashes of the fixed store's plots as written before the speed-up
  (tests/golden/analysis/plots.sha256). After an intended change of the figures, regenerate them with

      NOHARM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_fast_path.py -q

  and look at the new PNGs before committing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import noharm.analysis.collect as collect_mod
from noharm.analysis.collect import collect, local_artifact_dir
from noharm.analysis.store_readers import sqlite_experiment_runs, sqlite_path
from tests.test_analysis_report import _hashes
from tests.test_analysis_store import (  # noqa: F401
    analysis_collection, analysis_report, analysis_store, build_store, new_experiment,
)
from tests.test_store_readers import postgres_uri, served_store  # noqa: F401

GOLDEN_PLOTS = Path(__file__).parent / "golden" / "analysis" / "plots.sha256"
FRAMES = ("tidy", "runs", "stress", "reference", "trials", "params")



@pytest.fixture
def search_api_only(monkeypatch):
    """collect() as before the fast paths: every store through MLflow's search API."""
    monkeypatch.setattr(collect_mod, "sql_experiment_runs", lambda uri, experiment: None)
    monkeypatch.setattr(collect_mod, "server_runs", lambda client, experiment_id: None)


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


def test_server_read_and_search_api_report_the_same_bytes(served_store, tmp_path, monkeypatch):
    from noharm.analysis.report import write_report

    uri = served_store[0]
    fast = write_report("fixed", uri, tmp_path / "fast")
    assert fast.collection.tracking_uri == uri and len(fast.collection.tidy) > 1000
    monkeypatch.setattr(collect_mod, "server_runs", lambda client, experiment_id: None)
    write_report("fixed", uri, tmp_path / "slow")
    assert _hashes(tmp_path / "fast") == _hashes(tmp_path / "slow")


def test_postgresql_read_and_search_api_report_the_same_bytes(postgres_uri, tmp_path, monkeypatch):
    from noharm.analysis.report import write_report

    build_store(tmp_path / "store", "fixed", uri=postgres_uri)
    assert collect_mod.sql_experiment_runs(postgres_uri, "fixed") is not None  # the report below reads by SQL
    fast = write_report("fixed", postgres_uri, tmp_path / "fast")
    assert len(fast.collection.tidy) > 1000 and len(fast.collection.stress) == 30
    monkeypatch.setattr(collect_mod, "sql_experiment_runs", lambda uri, experiment: None)
    write_report("fixed", postgres_uri, tmp_path / "slow")
    assert _hashes(tmp_path / "fast") == _hashes(tmp_path / "slow")


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
