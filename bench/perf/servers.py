"""Tracking stores for the hand-run benchmarks: an `mlflow server` in front of a store, a PostgreSQL from
the `pgserver` wheel, and a synthetic store of any size grown from a real one in bulk.

    with postgres(folder) as pg, mlflow_server(pg.uri, folder / "artifacts") as server:
        ...  # server.uri: http://127.0.0.1:PORT; server.cpu(): its CPU seconds so far

Everything listens on 127.0.0.1 only. `pgserver` and `psycopg` are the `postgres` extra's packages
(`pip install pgserver 'psycopg[binary]'`); nothing here imports them until a PostgreSQL is asked for.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# The stages a synthetic store copies: what a sweep leaves besides stress runs (those need their artifacts).
GROWN_STAGES = ("search", "evaluate", "compose")
INSERT_BATCH = 20_000  # rows per batch of INSERTs
CHILD_TABLES = ("tags", "params", "metrics", "latest_metrics")  # MLflow's tables of a run's data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by every process of `pid`'s session, including children they
    have reaped: a server's master, its workers and the backends it forked (Linux /proc)."""
    sid = os.getsid(pid)
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[3]) == sid:  # fields after the name: state, ppid, pgrp, session, ..., utime (11) ... cstime (14)
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    """A server started here: its URI and the process that leads its session (for `session_cpu`)."""

    uri: str
    pid: int

    def cpu(self) -> float:
        return session_cpu(self.pid)


@contextmanager
def mlflow_server(store_uri: str, artifacts: str | os.PathLike, workers: int = 1,
                  log: str | os.PathLike | None = None) -> Iterator[Served]:
    """`mlflow server` on 127.0.0.1 in front of `store_uri` for the duration (its own session)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = open(log, "ab") if log else subprocess.DEVNULL
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
                             str(workers), "--backend-store-uri", store_uri,
                             "--artifacts-destination", Path(artifacts).absolute().as_uri()],
                            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server on {store_uri} exited with {proc.returncode} (log: {log})")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server on {store_uri} did not answer within 300 s") from None
                time.sleep(0.5)
        yield Served(uri, proc.pid)
    finally:
        os.killpg(proc.pid, 15)  # the server's own session: the mlflow command, uvicorn and its workers
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        if log:
            out.close()


@contextmanager
def postgres(folder: str | os.PathLike, database: str = "postgres") -> Iterator[Served]:
    """A PostgreSQL server on a data folder (created on first use, kept afterwards) listening on a Unix socket
    only, for the duration; its `postgresql+psycopg://` URI names `database` (created when missing)."""
    import pgserver

    server = pgserver.get_server(Path(folder).absolute(), cleanup_mode="stop")
    try:
        if database != "postgres" and database not in server.psql("SELECT datname FROM pg_database;"):
            server.psql(f"CREATE DATABASE {database};")
        yield Served(server.get_uri(database).replace("postgresql://", "postgresql+psycopg://", 1),
                     server.get_pid())
    finally:
        server.cleanup()


def _experiment_rows(source_uri: str, experiment: str, stages: tuple[str, ...] | None,
                     status: str | None) -> tuple[dict, list[dict], dict[str, dict[str, list[dict]]]]:
    """(experiment row, run rows oldest first, {table: {run id: rows}}) of the active runs of an experiment
    (of `stages` and `status` when given), read with SQLAlchemy from MLflow's tables."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun, SqlTag

    runs_table, tags_table = SqlRun.__table__, SqlTag.__table__
    source = sa.create_engine(source_uri, poolclass=sa.pool.NullPool)
    try:
        with source.connect() as con:
            exp = dict(con.execute(sa.select(SqlExperiment.__table__).where(
                SqlExperiment.__table__.c.name == experiment,
                SqlExperiment.__table__.c.lifecycle_stage == "active")).mappings().one())
            where = [runs_table.c.experiment_id == exp["experiment_id"], runs_table.c.lifecycle_stage == "active"]
            if status is not None:
                where.append(runs_table.c.status == status)
            if stages is not None:
                where.append(runs_table.c.run_uuid.in_(sa.select(tags_table.c.run_uuid).where(
                    tags_table.c.key == "noharm.stage", tags_table.c.value.in_(stages))))
            runs = [dict(r) for r in con.execute(sa.select(runs_table).where(*where).order_by(
                runs_table.c.start_time, runs_table.c.run_uuid)).mappings()]
            ids = [r["run_uuid"] for r in runs]
            rows: dict[str, dict[str, list[dict]]] = {name: {} for name in CHILD_TABLES}
            for name in CHILD_TABLES:
                table = sa.Table(name, sa.MetaData(), autoload_with=con)
                for row in con.execute(sa.select(table).where(table.c.run_uuid.in_(ids))).mappings():
                    rows[name].setdefault(row["run_uuid"], []).append(dict(row))
    finally:
        source.dispose()
    return exp, runs, rows


def _insert(target_uri: str, rows: Iterator[tuple[str, dict]]) -> None:
    """INSERT (table name, row) pairs into MLflow's tables of `target_uri`, in batches, in one transaction."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    tables = {"runs": SqlRun.__table__, "tags": SqlTag.__table__, "params": SqlParam.__table__,
              "metrics": SqlMetric.__table__, "latest_metrics": SqlLatestMetric.__table__}
    target = sa.create_engine(target_uri, poolclass=sa.pool.NullPool)
    batch: dict[str, list[dict]] = {name: [] for name in tables}

    def flush(con) -> None:
        for name, table in tables.items():  # runs first: the other tables refer to them
            if batch[name]:
                con.execute(sa.insert(table), batch[name])
                batch[name].clear()

    try:
        with target.begin() as con:
            for count, (name, row) in enumerate(rows, 1):
                batch[name].append(row)
                if count % INSERT_BATCH == 0:
                    flush(con)
            flush(con)
    finally:
        target.dispose()


def copy_experiment(source_uri: str, experiment: str, target_uri: str) -> int:
    """Copy every active run of an experiment, ids and all, into a new experiment of the same name (and
    artifact location) in `target_uri` (any SQL store MLflow can create); returns the number of runs."""
    from mlflow.tracking import MlflowClient

    exp, runs, rows = _experiment_rows(source_uri, experiment, None, None)
    target_exp = MlflowClient(tracking_uri=target_uri).create_experiment(
        experiment, artifact_location=exp["artifact_location"])  # MLflow creates (and migrates) the schema

    def copied() -> Iterator[tuple[str, dict]]:
        for run in runs:
            yield "runs", {**run, "experiment_id": int(target_exp)}
            for name in CHILD_TABLES:
                for row in rows[name].get(run["run_uuid"], ()):
                    yield name, row

    _insert(target_uri, copied())
    return len(runs)


def grow(source_uri: str, experiment: str, target_uri: str, n_runs: int, stages=GROWN_STAGES) -> int:
    """Copy the source experiment's FINISHED runs of `stages` into a new experiment of the same name in
    `target_uri` (any SQL store MLflow can create) until it holds `n_runs`; returns the count.

    Rows are copied table by table (runs, tags, params, metric history, latest metrics) with new run ids,
    as MLflow's `log_batch` would have written them, in a few bulk INSERTs: seconds instead of the
    minutes MLflow's API takes for thousands of runs. Each copy shifts `noharm.seed` by the number of
    source seeds (the tables get more seeds, not duplicate rows) and keeps `noharm.key`, so a resumed
    sweep of the source's suite finds every trial FINISHED.
    """
    from mlflow.tracking import MlflowClient

    _, runs, rows = _experiment_rows(source_uri, experiment, tuple(stages), "FINISHED")
    if not runs:
        raise SystemExit(f"no finished {'/'.join(stages)} runs in {experiment!r} of {source_uri}")
    seeds = sorted({int(t["value"]) for ts in rows["tags"].values() for t in ts if t["key"] == "noharm.seed"})
    shift = (max(seeds) + 1) if seeds else 1
    client = MlflowClient(tracking_uri=target_uri)  # MLflow creates (and migrates) the schema
    target_exp = client.create_experiment(experiment)
    location = client.get_experiment(target_exp).artifact_location.rstrip("/")
    now = int(time.time() * 1000)

    def copies() -> Iterator[tuple[str, dict]]:
        made, copy = 0, 0
        while True:
            for run in runs:
                if made >= n_runs:
                    return
                new_id = uuid.uuid4().hex
                start = now + made  # creation order, as runs logged one after another
                end = start + (run["end_time"] - run["start_time"] if run["end_time"] else 0)
                yield "runs", {**run, "run_uuid": new_id, "start_time": start, "end_time": end,
                               "experiment_id": int(target_exp), "artifact_uri": f"{location}/{new_id}/artifacts"}
                for name in CHILD_TABLES:
                    for row in rows[name].get(run["run_uuid"], ()):
                        row = {**row, "run_uuid": new_id}
                        if name == "tags" and row["key"] == "noharm.seed":
                            row["value"] = str(int(row["value"]) + copy * shift)
                        yield name, row
                yield "tags", {"key": "noharm.copy", "value": str(copy), "run_uuid": new_id}
                made += 1
            copy += 1

    _insert(target_uri, copies())
    return n_runs
