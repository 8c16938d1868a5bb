"""Runs out of an MLflow tracking store, fast: what `noharm report`, `noharm stress` and a sweep's start-up read.

MLflow's search API (`MlflowClient.search_runs`, wrapped by `search_all`) is the reference: it builds an
ORM object per metric, param and tag in the store and a protobuf message per metric in the client, so at a
paper's scale (thousands of runs, a million metrics) reading is most of a command's time. Three readers
give the same runs (`StoredRun`) without it:

- `sqlite:` stores: a few read-only SELECTs on MLflow's tables through `sqlite3` (MLflow not imported);
- `postgresql:` stores: the same SELECTs through SQLAlchemy, in one read-only transaction;
- a tracking server (`http(s)://`): `runs/search` answers read as plain JSON (no protobuf), in pages far
  below MLflow's HTTP timeout, several requests at a time (one run-id range each), so a server with
  several workers (MLflow's default is 4) serves them in parallel.

Each reader returns None when the store is not one it knows (another scheme, another schema, a missing
experiment): the caller then goes through MLflow's API, which also says what is wrong. Nothing is cached:
every call reads the store as it is. `tests/test_report_fast_path.py` holds every reader to MLflow's API.
"""

from __future__ import annotations

import gc
import json
import math
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

FIELDS = ("tags", "params", "metrics")  # what a reader can return of a run (the run's info always)
SEARCH_PAGE = 50_000  # runs per page of MLflow's search API (its largest page)
# Runs per `runs/search` request: the first page asks for SERVER_PAGE runs, each next one for as many as the
# server answered in SERVER_ANSWER seconds the time before (within SERVER_PAGES), so an answer stays far below
# MLflow's 120 s HTTP timeout whatever the size of the runs and the server's load (one answer of 5,000 runs
# took 64-78 s).
SERVER_PAGE = 100
SERVER_PAGES = (10, 1000)
SERVER_ANSWER = 10.0
# MLflow names runs `uuid4().hex`: one query per first hex digit splits an experiment into 16 parts of
# about equal size, read SERVER_REQUESTS at a time (MLflow's server runs 4 workers by default).
RUN_ID_DIGITS = "0123456789abcdef"
SERVER_REQUESTS = 4
SQL_SCHEMES = ("sqlite", "postgresql")  # stores read with SQL (other databases go through MLflow's API)
SERVER_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class StoredRun:
    """What noharm reads of one MLflow run: the same from MLflow's search API and from every reader here.

    `info` and `data` return the run itself, so code written against `mlflow.entities.Run` reads it
    unchanged (`run.info.run_id`, `run.info.start_time`, `run.data.tags`, `run.data.metrics`).
    """

    run_id: str
    status: str
    start_time: int | None
    artifact_uri: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric, as `Run.data.metrics`
    run_name: str = ""

    @property
    def info(self) -> "StoredRun":
        return self

    @property
    def data(self) -> "StoredRun":
        return self


def stored_run(run, fields: Iterable[str] = FIELDS) -> StoredRun:
    """A StoredRun from an `mlflow.entities.Run` (fields not asked for left empty)."""
    data = run.data
    return StoredRun(run.info.run_id, run.info.status, run.info.start_time, run.info.artifact_uri or "",
                     dict(data.tags) if "tags" in fields else {}, dict(data.params) if "params" in fields else {},
                     dict(data.metrics) if "metrics" in fields else {}, run.info.run_name or "")


def search_order(runs: Iterable[StoredRun]) -> list[StoredRun]:
    """Runs in the order of MLflow's search API (newest first, then by id), each run once."""
    seen: set[str] = set()
    unique = [r for r in runs if not (r.run_id in seen or seen.add(r.run_id))]
    return sorted(unique, key=lambda r: (-(r.start_time or 0), r.run_id))


@contextmanager
def collector_paused():
    """Python's cyclic garbage collector off meanwhile (back on afterwards, also after an error).

    Reading a store builds one object per metric (about a million for 5,000 runs) and the collector
    would rescan that growing heap again and again (bench/perf/report_speed.py: 5,000 runs searched
    in 16.5 s instead of 33.8 s).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def search_filter(status: str | None = None, tags: dict[str, str] | None = None) -> str:
    """MLflow's filter string for runs of one status carrying the given tag values."""
    def literal(value: str) -> str:
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value:
            return f'"{value}"'
        raise ValueError(f"cannot search MLflow for a value holding both quote characters: {value!r}")

    clauses = [f"tags.`{key}` = {literal(value)}" for key, value in (tags or {}).items()]
    if status is not None:
        clauses.append(f"attributes.status = {literal(status)}")
    return " and ".join(clauses)


def search_all(client, experiment_id: str, status: str | None = None, tags: dict[str, str] | None = None) -> list:
    """Every active run of the experiment (of one status, with the given tag values) through MLflow's search
    API, all pages, as MLflow Runs (garbage collector paused)."""
    from mlflow.entities import ViewType

    with collector_paused():
        out, token = [], None
        while True:
            page = client.search_runs([experiment_id], filter_string=search_filter(status, tags),
                                      run_view_type=ViewType.ACTIVE_ONLY, max_results=SEARCH_PAGE, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out


# ---- SQL stores ----------------------------------------------------------------------------------------

# The tables and columns of MLflow's SQL tracking store the SQL readers use
# (mlflow/store/tracking/dbmodels/models.py: SqlExperiment, SqlRun, SqlTag, SqlParam, SqlLatestMetric).
SQL_COLUMNS = {"experiments": ("experiment_id", "name", "lifecycle_stage"),
               "runs": ("run_uuid", "name", "status", "start_time", "artifact_uri", "experiment_id",
                        "lifecycle_stage"),
               "tags": ("run_uuid", "key", "value"), "params": ("run_uuid", "key", "value"),
               "latest_metrics": ("run_uuid", "key", "value", "is_nan")}
_FIND_EXPERIMENT = {"name": "SELECT experiment_id FROM experiments WHERE name = :exp AND lifecycle_stage = 'active'",
                    "id": "SELECT experiment_id FROM experiments WHERE experiment_id = :exp "
                          "AND lifecycle_stage = 'active'"}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores or in-memory databases)."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    if uri.startswith("sqlite:////"):
        path = "/" + path.lstrip("/")
    elif uri.startswith("sqlite:///"):
        path = path[1:] if path.startswith("/") else path
    return Path(path) if path and path != ":memory:" else None


def _runs_where(status: str | None, tags: dict[str, str] | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause (with its parameters, besides :exp) of the active runs of one experiment, of one status,
    carrying the given tag values."""
    where = ["experiment_id = :exp", "lifecycle_stage = 'active'"]
    values: dict[str, Any] = {}
    if status is not None:
        where.append("status = :status")
        values["status"] = status
    for i, (key, value) in enumerate((tags or {}).items()):
        where.append(f"run_uuid IN (SELECT run_uuid FROM tags WHERE key = :k{i} AND value = :v{i})")
        values.update({f"k{i}": key, f"v{i}": value})
    return " AND ".join(where), values


def _select_runs(execute, experiment: str, by_id: bool, status: str | None, tags: dict[str, str] | None,
                 fields: Iterable[str]) -> tuple[str, list[StoredRun]] | None:
    """The SELECTs of both SQL readers; `execute(sql, params)` returns an iterable of row tuples.

    They read what `SqlRun.to_mlflow_entity` reads: a run's latest metrics (NaN where `is_nan`), its
    params and tags.
    """
    found = list(execute(_FIND_EXPERIMENT["id" if by_id else "name"], {"exp": experiment}))
    if len(found) != 1:
        return None
    exp = found[0][0]
    where, values = _runs_where(status, tags)
    values["exp"] = exp
    runs = {run_id: (status_, start, artifacts or "", {}, {}, {}, name or "")
            for run_id, status_, start, artifacts, name in
            execute(f"SELECT run_uuid, status, start_time, artifact_uri, name FROM runs WHERE {where}", values)}
    chosen = f"SELECT run_uuid FROM runs WHERE {where}"
    for slot, table in ((3, "tags"), (4, "params")):
        if table in fields:
            for run_id, key, value in execute(f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({chosen})",
                                              values):
                runs[run_id][slot][key] = value
    if "metrics" in fields:
        for run_id, key, value, is_nan in execute(
                f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({chosen})", values):
            runs[run_id][5][key] = math.nan if is_nan else value
    return str(exp), search_order(StoredRun(run_id, *row[:6], run_name=row[6]) for run_id, row in runs.items())


def sqlite_experiment_runs(db: Path, experiment: str, *, by_id: bool = False, status: str | None = None,
                           tags: dict[str, str] | None = None,
                           fields: Iterable[str] = FIELDS) -> tuple[str, list[StoredRun]] | None:
    """(experiment id, runs) of an active experiment (by name, or by id with `by_id`), read from the file of a
    `sqlite:` store: every active run, or those of one status carrying the given tag values, with the `fields`
    asked for; None when the file, the experiment or the tables are not what this reader knows.

    Why not MLflow's API here: `MlflowClient.search_runs` goes through SQLAlchemy's ORM, which builds one
    object per metric, param and tag and expires each when its read-only session commits, and opening the
    store imports MLflow and checks its schema with alembic. That was 3.5 s of the default suite's report
    (828 runs) and grows to ~20 s at 5,000 runs; these SELECTs take a tenth of it, through a read-only
    connection inside one transaction (one snapshot, should a sweep be writing). The columns are checked
    first, so a store of another schema goes through the API instead of being misread.
    """
    try:
        con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        for table, columns in SQL_COLUMNS.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            if not set(columns) <= have:
                return None
        with collector_paused():
            con.execute("BEGIN")
            found = _select_runs(con.execute, experiment, by_id, status, tags, fields)
            con.execute("COMMIT")
            return found
    except sqlite3.Error:
        return None
    finally:
        con.close()


def database_experiment_runs(uri: str, experiment: str, *, by_id: bool = False, status: str | None = None,
                             tags: dict[str, str] | None = None,
                             fields: Iterable[str] = FIELDS) -> tuple[str, list[StoredRun]] | None:
    """As `sqlite_experiment_runs`, for a PostgreSQL store (the URI MLflow is given): the same SELECTs through
    SQLAlchemy, in one read-only REPEATABLE READ transaction (one snapshot); None when the database cannot
    be reached or is not what this reader knows."""
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    except (SQLAlchemyError, ImportError, ValueError):
        return None
    try:
        with engine.connect() as con:
            con = con.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with con.begin():
                inspector = sa.inspect(con)
                for table, columns in SQL_COLUMNS.items():
                    if not set(columns) <= {c["name"] for c in inspector.get_columns(table)}:
                        return None
                with collector_paused():
                    return _select_runs(lambda sql, values: con.execute(sa.text(sql), values), experiment,
                                        by_id, status, tags, fields)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def sql_store(uri: str) -> bool:
    """True for the stores `sql_experiment_runs` reads (sqlite and PostgreSQL)."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in SQL_SCHEMES


def sql_experiment_runs(uri: str, experiment: str, **query) -> tuple[str, list[StoredRun]] | None:
    """The SQL reader of the store's scheme (`sqlite_experiment_runs` or `database_experiment_runs`); None for
    any other store. `query`: by_id, status, tags, fields."""
    if not sql_store(uri):
        return None
    if uri.startswith("sqlite:"):
        db = sqlite_path(uri)
        return sqlite_experiment_runs(db, experiment, **query) if db is not None and db.is_file() else None
    return database_experiment_runs(uri, experiment, **query)


# ---- tracking servers ------------------------------------------------------------------------------------

def server_unreachable(uri: str, timeout: float) -> str | None:
    """Why the http(s) tracking server at `uri` does not answer within `timeout` seconds (None: it answers)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: a proxy or an older server without /health
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _json_run(run: dict, fields: Iterable[str]) -> StoredRun:
    """A StoredRun from one run of a `runs/search` answer, as `Run.from_proto` would read it (proto2
    defaults for absent fields; MLflow's JSON spells non-finite metric values as strings)."""
    info, data = run["info"], run.get("data", {})
    return StoredRun(
        info["run_id"], info.get("status", "RUNNING"), int(info.get("start_time", 0)), info.get("artifact_uri", ""),
        {t["key"]: t.get("value", "") for t in data.get("tags", ())} if "tags" in fields else {},
        {p["key"]: p.get("value", "") for p in data.get("params", ())} if "params" in fields else {},
        {m["key"]: float(m.get("value", 0.0)) for m in data.get("metrics", ())} if "metrics" in fields else {},
        info.get("run_name", ""))


def next_page_size(runs: int, seconds: float) -> int:
    """Runs to ask a server for after it answered `runs` runs in `seconds`: about SERVER_ANSWER seconds' worth,
    within SERVER_PAGES."""
    low, high = SERVER_PAGES
    return max(low, min(high, int(runs * SERVER_ANSWER / max(seconds, 1e-3))))


def server_runs(client, experiment_id: str, *, status: str | None = None, tags: dict[str, str] | None = None,
                fields: Iterable[str] = FIELDS) -> list[StoredRun] | None:
    """Every active run of the experiment (of one status, with the given tag values) from the tracking server
    behind `client` (an `MlflowClient`), in MLflow's search order; None when the client's store is not a
    server (the caller then uses MLflow's API).

    What MLflow's client does with a `runs/search` answer costs more than the server's work: it parses the
    JSON twice and builds a protobuf message and then an entity per metric (49 s of 1.2 M messages at
    5,000 runs). Here each answer is parsed once into plain dicts. Requests go through MLflow's own HTTP
    layer (`http_request`: credentials, TLS settings, retries, timeout). The experiment is read as 16
    run-id ranges (`attributes.run_id LIKE '<digit>%'`, MLflow's ids being lowercase hex), each in pages
    sized to about SERVER_ANSWER seconds of the server's answer, SERVER_REQUESTS ranges at a time: no answer
    nears the HTTP timeout at any size, and a server with several workers builds several answers at once.
    """
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    if not str(client.tracking_uri).startswith(SERVER_SCHEMES):
        return None
    store = client._tracking_client.store  # the store MLflow resolved for this URI (credentials included)
    if not isinstance(store, RestStore):
        return None
    creds = store.get_host_creds()
    endpoint = "/api/2.0/mlflow/runs/search"
    base = search_filter(status, tags)
    fields = tuple(fields)

    def run_id_range(digit: str) -> list[StoredRun]:
        clause = f"attributes.run_id LIKE '{digit}%'"
        body: dict[str, Any] = {"experiment_ids": [str(experiment_id)], "run_view_type": "ACTIVE_ONLY",
                                "max_results": SERVER_PAGE, "filter": f"{base} and {clause}" if base else clause}
        out: list[StoredRun] = []
        while True:
            started = time.monotonic()
            response = http_request(creds, endpoint, "POST", json=body)
            if response.status_code != 200:
                verify_rest_response(response, endpoint)  # raises MLflow's exception for the error
            seconds = time.monotonic() - started
            page = json.loads(response.content)
            runs = page.get("runs", ())
            out.extend(_json_run(run, fields) for run in runs)
            if not page.get("next_page_token"):
                return out
            body["page_token"] = page["next_page_token"]
            body["max_results"] = next_page_size(len(runs), seconds)

    with collector_paused(), ThreadPoolExecutor(SERVER_REQUESTS) as pool:
        parts = list(pool.map(run_id_range, RUN_ID_DIGITS))
    return search_order(run for part in parts for run in part)
