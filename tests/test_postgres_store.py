"""Sweeps on a real PostgreSQL (the `pgserver` wheel), the set-up the README's cluster section describes:
behind `mlflow server` (sweep, a second driver refused, `kill -9` and an immediate resume, `noharm stress`
and `noharm report`), and as a direct `postgresql+psycopg://` tracking URI (sweep and report).

Skipped, with the reason, only where the wheel's PostgreSQL cannot start (tests/postgres_store.py).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter

import pandas as pd
import pytest

from noharm.bench.cli import main
from tests.plugins import env_with_site, install_testkit, marked_env, marked_pids, stop_marked, write_suite
from tests.postgres_store import PostgresUnavailable, create_database, mlflow_server, postgres, query
from tests.test_resume import STAGE_SQL
from tests.test_stress_cli import SMALL

LEASE_SQL = "select value from experiment_tags where key = 'noharm.lease.{suite}'"


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL server from the pgserver wheel on 127.0.0.1 (its SQLAlchemy URL base), for this module."""
    try:
        with postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL from the pgserver wheel cannot start here: {exc}")


@pytest.fixture(scope="module")
def testkit_env(tmp_path_factory):
    return env_with_site(install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit"))


@pytest.fixture(scope="module")
def server(pg, testkit_env, tmp_path_factory):
    """`mlflow server` on database `mlflow` of `pg`, artifacts in a temp folder: (its URL, the database URI)."""
    store = create_database(pg, "mlflow")
    with mlflow_server(store, tmp_path_factory.mktemp("mlflow-server"), testkit_env) as url:
        yield url, store


def finished(store: str) -> Counter:
    """(stage, key) -> FINISHED runs in the database of an MLflow store."""
    return Counter((stage, key) for stage, key, status in query(store, STAGE_SQL) if status == "FINISHED")


def lease_record(store: str, suite: str) -> dict | None:
    rows = query(store, LEASE_SQL.format(suite=suite))
    return json.loads(rows[0][0]) if rows else None


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 600) -> None:
    """Wait until `condition()` holds while `process` runs (fails if it ends first or time runs out)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the driver ended before {what}: {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"not {what} in {timeout} s"
        time.sleep(0.2)


def test_sweep_through_mlflow_server_on_postgres(server, testkit_env, tmp_path, capsys):
    """A driver runs and is frozen (SIGSTOP: alive, no heartbeats); a second driver is refused in one line
    naming it; the first is killed with SIGKILL and the rerun takes the lease over at once (its process is
    gone) and completes the grid, every key FINISHED once; `noharm stress` and `noharm report` then read it
    all back through the server."""
    url, store = server
    suite = write_suite(tmp_path / "pg.yaml", name="pg", seeds=[0, 1], methods=["tiny-erm", "group-models"],
                        datasets=[{"name": "tiny-blobs", "attributes": ["side"]}],
                        hparams={"epochs": 2, "hidden": 16}, selectors=["greedy"], max_concurrent=2)
    cmd = [sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--tracking-uri", url, "--out"]
    marks = [uuid.uuid4().hex for _ in range(3)]
    try:
        first = subprocess.Popen([*cmd, str(tmp_path / "first"), "--quiet"], env=marked_env(testkit_env, marks[0]),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: sum(finished(store).values()) >= 1, first, "a run FINISHED")
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run([*cmd, str(tmp_path / "second"), "--quiet"], env=marked_env(testkit_env, marks[1]),
                                capture_output=True, text=True, timeout=600)
        held = lease_record(store, "pg")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()
        stop_marked(marks[0])  # the Ray processes the killed driver left behind (by pid, only ours)
        # Its heartbeat, moved an hour ahead: it cannot go stale during this test, so the rerun can take the
        # lease only because the holder's process has ended, and takes it without waiting.
        query(store, "update experiment_tags set value = %s where key = 'noharm.lease.pg'",
              (json.dumps({**held, "heartbeat": time.time() + 3600}),))
        rerun = subprocess.Popen([*cmd, str(tmp_path / "rerun")], env=marked_env(testkit_env, marks[2]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err[-3000:]
    finally:
        for mark in marks:
            stop_marked(mark)
    assert not any(marked_pids(mark) for mark in marks)

    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr[-2000:]
    assert second.stderr.startswith(f"noharm: error: suite 'pg' in experiment 'pg' of {url} is already being run by "
                                    f"another driver (pid {first.pid} on {socket.gethostname()}, driver "
                                    f"{held['driver']}, since "), second.stderr
    assert (f"lease tag 'noharm.lease.pg', its process runs on this machine); it is taken over as soon as pid "
            f"{first.pid} ends" in second.stderr)
    assert re.search(r"resuming: [1-9]\d* trials already FINISHED in MLflow are skipped", err), err[-2000:]
    assert lease_record(store, "pg") is None  # the rerun gave its lease back
    # 3 cells (tiny-erm, group-models, ERM) x 2 seeds evaluated; group-models composed on 2 seeds.
    done = finished(store)
    assert set(done.values()) == {1}
    assert Counter(stage for stage, _ in done) == {"evaluate": 6, "compose": 2}
    assert not [row for row in query(store, STAGE_SQL) if row[2] == "RUNNING"]

    (tmp_path / "stress.yaml").write_text(SMALL.replace("repeats: 40", "repeats: 10"))
    # A subprocess with the testkit plugin installed: stress reloads the dataset of each run it stresses.
    stress = subprocess.run([sys.executable, "-m", "noharm.bench.cli", "stress", "--experiment", "pg", "--tracking-uri",
                             url, "--suite", str(tmp_path / "stress.yaml"), "--quiet"],
                            env=testkit_env, capture_output=True, text=True, timeout=600)
    assert stress.returncode == 0, stress.stderr[-3000:]
    stressed = query(store, "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                            "and t.key = 'noharm.stage' and t.value = 'stress' where r.status = 'FINISHED'")
    assert stressed[0][0] > 0
    report = tmp_path / "report"
    assert main(["report", "--experiment", "pg", "--tracking-uri", url, "--out", str(report)]) == 0
    tidy = pd.read_parquet(report / "tidy.parquet")
    assert set(tidy["method"]) >= {"tiny-erm", "group-models", "erm"} and set(tidy["seed"]) == {0, 1}
    assert (report / "tables" / "stress.md").is_file() and (report / "leaderboard.html").is_file()
    capsys.readouterr()


def test_sweep_and_report_on_a_direct_postgresql_uri(pg, testkit_env, tmp_path):
    """No server: `--tracking-uri postgresql+psycopg://...` (the `postgres` extra's driver); the driver creates the
    store's tables, the trials write to it, and the report reads it back."""
    store = create_database(pg, "direct")
    suite = write_suite(tmp_path / "direct.yaml", name="direct", seeds=[0], methods=["tiny-erm"],
                        datasets=[{"name": "tiny-blobs", "attributes": ["side"]}],
                        hparams={"epochs": 2, "hidden": 16}, selectors=["greedy"], max_concurrent=2)
    mark = uuid.uuid4().hex
    try:
        run = subprocess.run([sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--out",
                              str(tmp_path / "out"), "--tracking-uri", store, "--quiet"],
                             env=marked_env(testkit_env, mark), cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    finally:
        stop_marked(mark)
    assert run.returncode == 0, run.stderr[-3000:]
    done = finished(store)
    assert set(done.values()) == {1} and Counter(stage for stage, _ in done) == {"evaluate": 2}
    assert lease_record(store, "direct") is None and not (tmp_path / "out" / "mlflow.db").exists()
    report = tmp_path / "report"
    assert main(["report", "--experiment", "direct", "--tracking-uri", store, "--out", str(report)]) == 0
    tidy = pd.read_parquet(report / "tidy.parquet")
    assert set(tidy["method"]) == {"tiny-erm", "erm"}
