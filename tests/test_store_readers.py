"""The fast readers of `analysis.store_readers` give what MLflow's search API gives (issue 24: reading at scale
through a server), on a real `mlflow server` on 127.0.0.1 and on a PostgreSQL store (from the `pgserver`
wheel; those tests skip without it), for the report, `noharm stress` and a sweep's start-up
(`Tracker.finished_index`, `Tracker.frame`, `tracking.finished_runs`).

Other test modules import the `served_store` fixture from here.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import noharm.analysis.store_readers as readers
from noharm.analysis.store_readers import (
    StoredRun, database_experiment_runs, search_all, search_filter, search_order, server_runs, sql_experiment_runs,
    sqlite_experiment_runs, stored_run,
)
from tests.test_analysis_store import SEARCH_TRIALS, analysis_store, new_experiment  # noqa: F401

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def plain(run: StoredRun) -> tuple:
    """A run with NaN spelled out, so that equal runs compare equal."""
    metrics = {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in run.metrics.items()}
    return run.run_id, run.status, run.start_time, run.artifact_uri, run.tags, run.params, metrics, run.run_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store_uri: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` (one worker) on 127.0.0.1 in front of `store_uri`, answering; (process, its URI)."""
    uri = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers",
                             "1", "--backend-store-uri", store_uri, "--artifacts-destination",
                             (folder / "served-artifacts").as_uri()],
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return proc, uri
        except OSError:
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)  # the server's own session: the mlflow command, uvicorn and its worker
    proc.wait(timeout=60)


@pytest.fixture(scope="session")
def served_store(analysis_store, tmp_path_factory):
    """(server URI, its database file): a copy of the fixed store behind a real `mlflow server`."""
    folder = tmp_path_factory.mktemp("served")
    db = folder / "served.db"
    src = sqlite3.connect(readers.sqlite_path(analysis_store[0]))
    with sqlite3.connect(db) as dst:
        src.backup(dst)
    src.close()
    proc, uri = start_server(f"sqlite:///{db}", folder)
    yield uri, db
    stop_server(proc)


def log_odd_runs(client, exp: str) -> list[str]:
    """Runs holding what a reader could get wrong: a metric logged twice, NaN and infinite values, an empty
    tag, FINISHED / FAILED / RUNNING; a deleted run besides. Returns the ids of the active runs."""
    from mlflow.entities import Metric, Param, RunTag

    kept = []
    for i, status in enumerate(("FINISHED", "FAILED", "RUNNING")):
        run = client.create_run(exp, run_name=f"r{i}", tags={"noharm.stage": "evaluate", "noharm.seed": str(i),
                                                             "noharm.suite": "odd's"})
        client.log_batch(run.info.run_id, metrics=[
            Metric("test/model/acc", 0.5 + i, 1000, 0), Metric("test/model/acc", 0.25 * i, 2000, 1),  # latest wins
            Metric("test/model/auc", float("nan"), 1000, 0), Metric("cost/peak", float("inf"), 1000, 0),
            Metric("test/model/neg", -float("inf"), 1000, 0)],
            params=[Param("lr", f"0.{i}1"), Param("optimizer", "sgd")], tags=[RunTag("empty", "")])
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        kept.append(run.info.run_id)
    client.delete_run(client.create_run(exp, run_name="deleted").info.run_id)
    return kept


def the_api(client, exp: str, **query) -> list[tuple]:
    return [plain(stored_run(r)) for r in search_order(stored_run(r) for r in search_all(client, exp, **query))]


def check_odd_runs(fast: list[StoredRun], client, exp: str, kept: list[str]) -> None:
    """`fast` holds `log_odd_runs`'s runs as MLflow's search API reads them, in its order."""
    assert [plain(r) for r in fast] == the_api(client, exp)
    assert sorted(r.run_id for r in fast) == sorted(kept)
    one = next(r for r in fast if r.tags["noharm.seed"] == "2")
    assert one.metrics["test/model/acc"] == 0.5 and math.isnan(one.metrics["test/model/auc"])
    assert one.metrics["cost/peak"] == 1.7976931348623157e308 == -one.metrics["test/model/neg"]  # MLflow's inf
    assert one.params == {"lr": "0.21", "optimizer": "sgd"} and one.status == "RUNNING" and one.run_name == "r2"
    assert one.tags["empty"] == ""


# ---- SQLite ---------------------------------------------------------------------------------------------
def test_sqlite_read_matches_the_search_api_run_by_run(analysis_store):
    uri = analysis_store[0]
    client, exp, name = new_experiment(uri, "fast-path")
    other, other_exp, _ = new_experiment(uri, "fast-path-other")
    kept = log_odd_runs(client, exp)
    other.create_run(other_exp, run_name="elsewhere")
    db = readers.sqlite_path(uri)
    before = db.read_bytes()
    exp_id, fast = sqlite_experiment_runs(db, name)
    assert db.read_bytes() == before  # read-only
    assert exp_id == exp
    check_odd_runs(fast, client, exp, kept)


# ---- a tracking server ---------------------------------------------------------------------------------
def test_server_read_matches_the_search_api_run_by_run(served_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri, db = served_store
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"odd-{time.time_ns()}")
    kept = log_odd_runs(client, exp)
    MlflowClient(tracking_uri=uri).create_run(client.create_experiment(f"other-{time.time_ns()}"))
    monkeypatch.setattr(readers, "SERVER_PAGE", 1)  # pages of one and two runs: paging within every range
    monkeypatch.setattr(readers, "SERVER_PAGES", (1, 2))
    fast = server_runs(client, exp)
    check_odd_runs(fast, client, exp, kept)
    # The file behind the server, read by SQL, holds the same runs.
    assert [plain(r) for r in sql_experiment_runs(f"sqlite:///{db}", exp, by_id=True)[1]] == [plain(r) for r in fast]


def test_pages_are_sized_to_the_servers_pace():
    assert readers.SERVER_ANSWER == 10.0 and readers.SERVER_PAGES == (10, 1000)
    assert readers.next_page_size(100, 20.0) == 50  # a slow answer: half the runs next time
    assert readers.next_page_size(100, 5.0) == 200
    assert readers.next_page_size(100, 0.01) == 1000 and readers.next_page_size(0, 3.0) == 10  # within bounds


def test_server_read_of_the_fixed_store_in_parallel_ranges(served_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served_store[0])
    exp = client.get_experiment_by_name("fixed").experiment_id
    fast = server_runs(client, exp)
    assert len(fast) == 30 + 36 + 5 + len(SEARCH_TRIALS) + 1  # evaluate, compose, stress, search, failed
    assert [plain(r) for r in fast] == the_api(client, exp)
    assert len({r.run_id[0] for r in fast}) > 8  # the runs fall in many of the 16 run-id ranges


def test_server_read_filters_by_status_and_tags(served_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served_store[0])
    exp = client.create_experiment(f"filtered-{time.time_ns()}")
    log_odd_runs(client, exp)
    for query in ({"status": "FINISHED"}, {"tags": {"noharm.suite": "odd's", "noharm.seed": "1"}},
                  {"status": "RUNNING", "tags": {"noharm.stage": "evaluate"}}, {"status": "KILLED"}):
        fast = server_runs(client, exp, **query)
        assert [plain(r) for r in fast] == the_api(client, exp, **query), query
    assert [r.status for r in server_runs(client, exp, tags={"noharm.seed": "1"})] == ["FAILED"]
    only_tags = server_runs(client, exp, status="FINISHED", fields=("tags",))
    assert only_tags[0].tags["noharm.seed"] == "0" and only_tags[0].params == {} and only_tags[0].metrics == {}


def test_server_read_is_not_used_for_other_stores(analysis_store):
    from mlflow.tracking import MlflowClient

    assert server_runs(MlflowClient(tracking_uri=analysis_store[0]), "1") is None


def test_a_filter_value_with_both_quotes_is_refused():
    assert search_filter("FINISHED", {"noharm.suite": "it's"}) == \
        "tags.`noharm.suite` = \"it's\" and attributes.status = 'FINISHED'"
    with pytest.raises(ValueError, match="both quote characters"):
        search_filter(None, {"noharm.suite": "it's \"odd\""})


def test_an_unreachable_server_is_one_line_at_once(tmp_path):
    from noharm.analysis.collect import AnalysisError, collect

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(AnalysisError, match=rf"^MLflow tracking server {uri} is not reachable \(.*refused.*\); "
                                            "start it or fix --tracking-uri$"):
        collect("fixed", uri)


def test_a_missing_experiment_behind_a_server_is_one_line(served_store):
    from noharm.analysis.collect import AnalysisError, collect

    with pytest.raises(AnalysisError, match="no MLflow experiment 'nope'.*experiments there: .*fixed"):
        collect("nope", served_store[0])


# ---- the sweep's start-up, its end table, and `noharm stress`'s run discovery ---------------------------
def log_suite(client, exp: str) -> None:
    """A suite's runs: search runs (params, objective), evaluate and compose runs (a key FINISHED twice, a
    FAILED one), and a run of another suite."""
    from mlflow.entities import Metric, Param

    def log(name, tags, metrics, params=(), status="FINISHED"):
        run = client.create_run(exp, run_name=name, tags={"noharm.suite": "s", **tags})
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params])
        client.set_terminated(run.info.run_id, status)

    for i in range(3):
        log(f"search {i}", {"noharm.stage": "search", "noharm.key": f"k-search-{i}", "noharm.cell": "c",
                            "noharm.method": "erm", "noharm.search_trial": str(i), "noharm.code_version": "v"},
            {"objective": 0.5 + i / 10, "val/model/acc": 0.7}, [("lr", f"0.0{i + 1}"), ("epochs", "3")])
    for seed in (0, 1):
        log(f"erm s{seed}", {"noharm.stage": "evaluate", "noharm.key": f"k-erm-{seed}", "noharm.method": "erm",
                             "noharm.seed": str(seed)}, {"test/model/acc": 0.8 + seed / 100}, [("lr", "0.01")])
    log("erm s1 again", {"noharm.stage": "evaluate", "noharm.key": "k-erm-1", "noharm.method": "erm",
                         "noharm.seed": "1"}, {"test/model/acc": 0.1})  # the newer copy of a key: ignored
    log("fin s0", {"noharm.stage": "evaluate", "noharm.key": "k-fin-0", "noharm.method": "fin"}, {}, status="FAILED")
    log("compose", {"noharm.stage": "compose", "noharm.key": "k-compose-0", "noharm.strategy": "greedy"},
        {"test/selected_greedy/acc": 0.81, "selection/n_experts": 1.0})
    log("stress", {"noharm.stage": "stress", "noharm.key": "k-stress"}, {"stress/greedy/harm_rate_mean": 0.0},
        [("stress.repeats", "10")])
    run = client.create_run(exp, run_name="other suite", tags={"noharm.suite": "t", "noharm.stage": "evaluate"})
    client.set_terminated(run.info.run_id, "FINISHED")


def index_view(index: dict) -> dict:
    """What a resumed sweep uses of the finished index: each key's run, and a search run's params and metrics."""
    return {key: (run.info.run_id, run.data.tags, run.data.params if key[0] == "search" else None,
                  run.data.metrics if key[0] == "search" else None) for key, run in index.items()}


def start_up_views(uri: str, exp: str) -> dict:
    """Everything a resumed sweep and `noharm stress` read of the store, through `Tracker(uri, exp)`."""
    from noharm.bench import tracking
    from noharm.bench.sweep.searcher import prior_search_results
    from noharm.bench.sweep.suite import load_suite

    tracker = tracking.Tracker(uri, exp)
    index = tracker.finished_index("s")
    suite = load_suite(Path(tracking.__file__).with_name("suites") / "default.yaml")
    prior = prior_search_results([r for (stage, _), r in index.items() if stage == "search"], suite, "v")
    return {"index": index_view(index), "prior": prior, "frame": tracker.frame("s"),
            "evaluated": tracking.finished_runs(tracker, "evaluate"),
            "stressed": tracking.finished_runs(tracker, "stress")}


def assert_same_start_up(got: dict, want: dict) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(got.pop("frame"), want["frame"], check_exact=True)
    assert got == {k: v for k, v in want.items() if k != "frame"}


@pytest.fixture(scope="module")
def suite_store(served_store):
    """(sqlite URI of the served file, server URI, experiment id) of an experiment holding `log_suite`'s runs."""
    from mlflow.tracking import MlflowClient

    uri, db = served_store
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"suite-{time.time_ns()}")
    log_suite(client, exp)
    return f"sqlite:///{db}", uri, exp


@pytest.fixture(scope="module")
def start_up_by_api(suite_store):
    mp = pytest.MonkeyPatch()
    from noharm.bench import tracking

    mp.setattr(tracking, "sql_experiment_runs", lambda *a, **k: None)
    mp.setattr(tracking, "server_runs", lambda *a, **k: None)
    try:
        return start_up_views(suite_store[0], suite_store[2])
    finally:
        mp.undo()


def test_start_up_by_api_reads_what_the_sweep_left(start_up_by_api):
    index, prior, frame = start_up_by_api["index"], start_up_by_api["prior"], start_up_by_api["frame"]
    assert sorted(index) == [("compose", "k-compose-0"), ("evaluate", "k-erm-0"), ("evaluate", "k-erm-1"),
                             *[("search", f"k-search-{i}") for i in range(3)], ("stress", "k-stress")]
    assert index[("search", "k-search-2")][2] == {"lr": "0.03", "epochs": "3"}
    assert [(h["lr"], objective, number) for h, objective, _, _, number in prior["c"]] == \
        [(0.01, 0.5, 0), (0.02, 0.6, 1), (0.03, 0.7, 2)]
    assert frame["test/model/acc"].tolist()[:2] == [0.8, 0.81]  # the older erm s1 run, not 0.1
    assert [r["tags"].get("noharm.key") for r in start_up_by_api["evaluated"]] == \
        ["k-erm-0", "k-erm-1", "k-erm-1", None]  # the last: another suite's
    assert [r["params"] for r in start_up_by_api["stressed"]] == [{"stress.repeats": "10"}]


def test_start_up_by_sql_is_the_start_up_by_api(suite_store, start_up_by_api):
    assert_same_start_up(start_up_views(suite_store[0], suite_store[2]), start_up_by_api)


def test_start_up_through_a_server_is_the_start_up_by_api(suite_store, start_up_by_api):
    assert_same_start_up(start_up_views(suite_store[1], suite_store[2]), start_up_by_api)


# ---- PostgreSQL -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory):
    """A `postgresql+psycopg://` URI of a fresh PostgreSQL (the `pgserver` wheel, Unix socket only)."""
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()


def test_postgresql_read_matches_the_search_api_run_by_run(postgres_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=postgres_uri)
    exp = client.create_experiment("odd")
    kept = log_odd_runs(client, exp)
    client.create_run(client.create_experiment("other"))
    exp_id, fast = database_experiment_runs(postgres_uri, "odd")
    assert exp_id == exp
    check_odd_runs(fast, client, exp, kept)
    for query in ({"status": "FAILED"}, {"tags": {"noharm.seed": "2"}}):
        assert [plain(r) for r in sql_experiment_runs(postgres_uri, exp, by_id=True, **query)[1]] == \
            the_api(client, exp, **query)
    assert database_experiment_runs(postgres_uri, "no-such-experiment") is None


def test_start_up_on_postgresql_is_the_start_up_by_api(postgres_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    from noharm.bench import tracking

    client = MlflowClient(tracking_uri=postgres_uri)
    exp = client.create_experiment("suite")
    log_suite(client, exp)
    fast = start_up_views(postgres_uri, exp)
    monkeypatch.setattr(tracking, "sql_experiment_runs", lambda *a, **k: None)
    assert_same_start_up(fast, start_up_views(postgres_uri, exp))


def test_an_unknown_database_is_left_to_mlflow(tmp_path):
    assert database_experiment_runs("postgresql+psycopg://nobody@/nowhere?host=" + str(tmp_path), "x") is None
    assert sql_experiment_runs("mysql://nobody@127.0.0.1:1/x", "x") is None  # not read by SQL: MLflow's API
