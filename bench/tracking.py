"""The only module that talks to MLflow.

Layout of a sweep in MLflow (README.md, "What a sweep leaves in MLflow" documents it for readers):

- one experiment per suite run (default name: the suite's name);
- one run per trial, tagged `noharm.suite`, `noharm.stage` (search / evaluate /
  compose), `noharm.dataset`, `noharm.target`, `noharm.attribute`,
  `noharm.method`, `noharm.seed`, `noharm.key`, `noharm.git_commit`,
  `noharm.candidates` (comma-separated), `noharm.groups` (JSON list of group
  names in id order), and for compositions `noharm.composed_from`
  (`<method run id>,<ERM run id>`) and `noharm.strategy`;
- params: every resolved hyperparameter under its own name, dataset options as
  `dataset.<option>`, and `trial.objective`, `trial.precision`,
  `trial.channels_last`, `trial.min_group_size`;
- metrics: every key of `TrialResult.metrics` (`{split}/{candidate}/{metric}`),
  `cost/<name>`, `objective` (the suite's validation objective, higher is
  better), and per epoch `epoch/train_loss`, `epoch/val_objective` (step = epoch);
  names pass through `metric_name` (each character MLflow forbids becomes `_`);
- artifacts: `predictions.parquet`, `model.pt`, `config.json`, `metrics.json`
  (compositions: `predictions.parquet`, `selection.json`); a failed trial ends
  FAILED with `traceback.txt`.

Every method here uses an explicit `MlflowClient` (never the fluent API's global
state), so trials running in Ray workers never inherit an experiment id by accident.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from noharm.analysis.record import COMPOSE, EVALUATE, PREDICTIONS_ARTIFACT, SEARCH, TAG, metric_name, untag
from noharm.analysis.store_readers import (
    FIELDS, StoredRun, search_filter, server_runs, server_unreachable, sql_experiment_runs, sql_store, stored_run,
)
from noharm.bench.errors import ConfigError

# Well under the 15 s a user should wait for a dead server.
CONNECT_TIMEOUT = 5.0
# Schemes MLflow stores runs in (its database back ends and its server); `file:` is left out on purpose, and
# so is `mssql:` (its driver needs system ODBC libraries no pip extra can bring; put it behind `mlflow server`).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql")
SERVER_SCHEMES = ("http", "https", "databricks")
# For a database scheme whose driver is not in the standard library: noharm's pip extra that installs the
# driver, and the URI form (dialect+driver) that extra serves.
DRIVER_EXTRAS = {"postgresql": ("postgres", "postgresql+psycopg"), "mysql": ("mysql", "mysql+pymysql")}
SQLITE_MAGIC = b"SQLite format 3\x00"



def default_uri(out: str | os.PathLike) -> str:
    """The local store of a sweep: an SQLite database inside the output folder."""
    return f"sqlite:///{Path(out).absolute() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:")


def store_scheme(uri: str) -> str:
    """'postgresql' for postgresql+psycopg://...: the store kind, without the driver."""
    return urllib.parse.urlsplit(uri).scheme.split("+", 1)[0].lower()


def is_database_store(uri: str) -> bool:
    """A database the driver opens itself (SQLite, PostgreSQL, MySQL), not a server."""
    return store_scheme(uri) in DATABASE_SCHEMES


def check_tracking_uri(uri: str) -> None:
    """The URI's scheme is one MLflow can keep a sweep in; `file:` stores and plain paths are refused."""
    scheme = store_scheme(uri)
    if scheme in DATABASE_SCHEMES or scheme in SERVER_SCHEMES:
        check_database_driver(uri)
        return
    hint = "use sqlite:///PATH/mlflow.db (a local store) or http://HOST:PORT (an MLflow server)"
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path, or a Windows drive letter
        raise ConfigError(f"tracking URI {uri!r} is a file store, which MLflow 3 no longer writes to; {hint}")
    if scheme == "mssql":
        raise ConfigError(f"tracking URI {uri!r}: noharm does not open SQL Server stores directly; run "
                          "`mlflow server --backend-store-uri` on it and give http://HOST:PORT")
    raise ConfigError(f"tracking URI {uri!r} has an unknown scheme {scheme + ':'!r}; {hint}")


def check_database_driver(uri: str) -> None:
    """A database URI's driver (the one SQLAlchemy picks for it) imports; else one line naming the extra."""
    family = store_scheme(uri)
    if family not in DRIVER_EXTRAS:
        return
    extra, form = DRIVER_EXTRAS[family]
    try:
        dialect = make_url(uri).get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"tracking URI {uri!r} names a database driver SQLAlchemy does not know; write it as "
                          f"{form}://USER@HOST/DATABASE") from None
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"tracking URI {uri!r} is not a database URL ({exc}); write it as "
                          f"{form}://USER@HOST/DATABASE") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        fix = f"pip install 'noharm[{extra}]'"
        if f"{dialect.name}+{dialect.driver}" != form:
            fix += f" and write the URI as {form}://..."
        raise ConfigError(f"tracking URI {uri!r} needs the database driver {exc.name or dialect.driver!r}, "
                          f"which is not installed; {fix}") from None


def check_sqlite_store(uri: str) -> None:
    """An existing SQLite store must be an SQLite database (a corrupt or foreign file is named, not opened)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.is_dir():
        raise ConfigError(f"tracking store {str(path)!r} is a folder; give the path of a .db file")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise ConfigError(f"tracking store {str(path)!r} is not an SQLite database (corrupt or another file); "
                              "move it away or choose another --out / --tracking-uri")


def check_tracking_server(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """An http(s) tracking server answers within `timeout` seconds (any HTTP reply counts as alive)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    reason = server_unreachable(uri, timeout)
    if reason is not None:
        raise ConfigError(f"MLflow tracking server {uri} is not reachable ({reason}); start it "
                          f"(`mlflow server --host 127.0.0.1 --port {parts.port or 5000}`) or fix --tracking-uri")



def git_commit() -> str:
    """The source tree's commit (with `+dirty` when it has uncommitted changes), or `unknown`."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Tracker:
    """One experiment of one tracking store, through an explicit MlflowClient."""

    def __init__(self, uri: str, experiment_id: str):
        self.uri = uri
        self.experiment_id = experiment_id
        self.client = MlflowClient(tracking_uri=uri)

    # ---- driver side ------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str, experiment: str, artifact_location: str | None = None) -> "Tracker":
        """Connect, creating the store's tables and the experiment when missing (driver only, before trials).

        Trials racing to create tables would fail, so the driver does it first.
        """
        try:
            client = MlflowClient(tracking_uri=uri)  # opens (and migrates) a database store
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
            elif exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
                exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
        except (MlflowException, SQLAlchemyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot use MLflow tracking store {uri!r}: {first}") from None
        return cls(uri, exp_id)

    def runs(self, suite: str | None = None, stage: str | None = None, status: str | None = None,
             key: str | None = None, extra: str | None = None) -> list:
        """Runs of this experiment matching the given tags, through MLflow's search API (all pages): for the
        few runs of a narrow query (one key, the RUNNING ones); `stored` reads many runs faster."""
        tags = {f"{TAG}{name}": value for name, value in (("suite", suite), ("stage", stage), ("key", key))
                if value is not None}
        clauses = [c for c in (search_filter(status, tags), extra) if c]
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=" and ".join(clauses),
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def stored(self, fields=FIELDS, status: str | None = None, **tags: str) -> list[StoredRun]:
        """Runs of this experiment of one status carrying the given `noharm.*` tag values (`suite=...`,
        `stage=...`), with the `fields` asked for, in MLflow's search order, read by
        `analysis.store_readers` (SQL, or plain JSON from a server; MLflow's API for other stores)."""
        where = {f"{TAG}{name}": value for name, value in tags.items()}
        found = sql_experiment_runs(self.uri, self.experiment_id, by_id=True, status=status, tags=where,
                                    fields=fields)
        if found is not None:
            return found[1]
        runs = server_runs(self.client, self.experiment_id, status=status, tags=where, fields=fields)
        if runs is not None:
            return runs
        return [stored_run(r, fields) for r in self.runs(status=status, extra=search_filter(None, where))]

    def finished_index(self, suite: str) -> dict[tuple[str, str], StoredRun]:
        """{(stage, key): run} of every FINISHED run of the suite (oldest wins if a key repeats).

        A resumed sweep needs the tags of every run, and the params and metrics of search runs only (their
        hyperparameters and objective seed the search again). A SQL store reads just that; a server sends
        whole runs anyway, so it is asked once.
        """
        if sql_store(self.uri):
            runs = self.stored(("tags",), status="FINISHED", suite=suite)
            searched = {r.run_id: r for r in self.stored(FIELDS, status="FINISHED", suite=suite, stage=SEARCH)}
            runs = [searched.get(r.run_id, r) for r in runs]
        else:
            runs = self.stored(FIELDS, status="FINISHED", suite=suite)
        index: dict[tuple[str, str], StoredRun] = {}
        for run in sorted(runs, key=lambda r: r.start_time or 0):
            index.setdefault((run.tags.get(f"{TAG}stage", ""), run.tags.get(f"{TAG}key", "")), run)
        return index

    def close_stale(self, suite: str, status: str = "KILLED") -> int:
        """End the suite's runs left RUNNING by an interrupted driver; returns how many.

        Only safe when no other driver is running the same suite at the same time.
        """
        stale = self.runs(suite=suite, status="RUNNING")
        for run in stale:
            self.client.set_tag(run.info.run_id, f"{TAG}ended_by", "a later sweep (interrupted run)")
            self.client.set_terminated(run.info.run_id, status)
        return len(stale)

    def close_invocation(self, suite: str, invocation: str, status: str = "FAILED") -> int:
        """End runs of one driver invocation still RUNNING after the sweep (their worker died)."""
        stale = self.runs(suite=suite, status="RUNNING", extra=f"tags.`{TAG}invocation` = '{invocation}'")
        for run in stale:
            self.client.set_tag(run.info.run_id, f"{TAG}error", "the trial's worker process died")
            self.client.set_terminated(run.info.run_id, status)
        return len(stale)

    # ---- trial side -------------------------------------------------------------------------
    def find_finished(self, suite: str, stage: str, key: str):
        """The FINISHED run of (suite, stage, key), or None."""
        runs = self.runs(suite=suite, stage=stage, status="FINISHED", key=key)
        return min(runs, key=lambda r: r.info.start_time or 0) if runs else None

    def start(self, name: str, tags: dict[str, Any], params: dict[str, Any] | None = None) -> str:
        """Create a RUNNING run with tags and params; returns its id."""
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={k: str(v) for k, v in tags.items()})
        run_id = run.info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        for chunk in _chunks(items, 100):
            self.client.log_batch(run_id, params=chunk)
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log many metrics in few calls; names go through `metric_name`; None becomes NaN."""
        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float("nan") if v is None else float(v), now, step) for k, v in metrics.items()]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def log_history(self, run_id: str, history: Iterable[tuple[int, dict[str, float]]]) -> None:
        """Per-epoch curves: {name: value} per step."""
        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, int(step)) for step, values in history for k, v in values.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, 100):
            self.client.log_batch(run_id, tags=chunk)

    def log_dir(self, run_id: str, folder: str | os.PathLike) -> None:
        self.client.log_artifacts(run_id, str(folder))

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def fail(self, run_id: str, traceback_text: str, error: str, attempts: int | None = None) -> None:
        """End a run FAILED with its traceback as `traceback.txt`, the error's last line as a tag and,
        when known, how many attempts it made (`noharm.attempts`)."""
        self.client.log_text(run_id, traceback_text, "traceback.txt")
        self.client.set_tag(run_id, f"{TAG}error", error[:5000])
        if attempts is not None:
            self.client.set_tag(run_id, f"{TAG}attempts", str(attempts))
        self.client.set_terminated(run_id, "FAILED")

    def finish(self, run_id: str) -> bool:
        """End a run FINISHED unless something else ended it meanwhile (a later sweep marked it KILLED)."""
        if self.client.get_run(run_id).info.status != "RUNNING":
            return False
        self.client.set_terminated(run_id, "FINISHED")
        return True

    def kill(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "KILLED")

    def get(self, run_id: str):
        return self.client.get_run(run_id)

    def copy(self, src_run_id: str, name: str, tags: dict[str, Any]) -> str:
        """A new FINISHED run holding another run's params, metrics and artifacts, with new tags.

        The seed the search ran on needs no retraining: its evaluate run is a copy
        of the best search run (tag `noharm.copied_from`).
        """
        src = self.client.get_run(src_run_id)
        merged = {**src.data.tags, **tags, f"{TAG}copied_from": src_run_id}
        merged = {k: v for k, v in merged.items() if not k.startswith("mlflow.")}
        run_id = self.start(name, merged, src.data.params)
        try:
            curves = [k for k in src.data.metrics if k.startswith("epoch/")]
            self.log_metrics(run_id, {k: v for k, v in src.data.metrics.items() if k not in curves})
            for k in curves:
                hist = self.client.get_metric_history(src_run_id, k)
                items = [Metric(k, m.value, m.timestamp, m.step) for m in hist]
                for chunk in _chunks(items, 1000):
                    self.client.log_batch(run_id, metrics=chunk)
            with tempfile.TemporaryDirectory(prefix="noharm-copy-") as tmp:
                local = self.client.download_artifacts(src_run_id, "", tmp)
                if any(Path(local).iterdir()):
                    self.client.log_artifacts(run_id, local)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.finish(run_id)
        return run_id

    def download(self, run_id: str, name: str, dst: str | os.PathLike) -> Path:
        """One artifact of a run into `dst`; returns its local path."""
        return Path(self.client.download_artifacts(run_id, name, str(dst)))

    def load_predictions(self, run_id: str) -> pd.DataFrame:
        """The predictions table stored with a run."""
        with tempfile.TemporaryDirectory(prefix="noharm-preds-") as tmp:
            return pd.read_parquet(self.download(run_id, PREDICTIONS_ARTIFACT, tmp))

    # ---- reading a finished sweep ------------------------------------------------------------
    def frame(self, suite: str, stages: Iterable[str] = (EVALUATE, COMPOSE)) -> pd.DataFrame:
        """One row per FINISHED (stage, key) of the given stages: run_id, the noharm.* tags, and every metric.

        A key FINISHED more than once (two drivers that raced before leases existed) counts once,
        its oldest run, as `finished_index`, the resume and `noharm report` do.
        """
        rows = []
        for stage in stages:
            seen: set[str] = set()
            runs = sorted(self.stored(("tags", "metrics"), status="FINISHED", suite=suite, stage=stage),
                          key=lambda r: (r.start_time or 0, r.run_id))
            for run in runs:
                key = run.tags.get(f"{TAG}key", run.run_id)
                if key in seen:
                    continue
                seen.add(key)
                rows.append({"run_id": run.run_id, **untag(run.tags), **run.metrics})
        return pd.DataFrame(rows)



# --- stress support ---
# Small helpers for `bench.stress.run` (distribution-shift stress tests of finished runs).


def open_existing(experiment: str, tracking_uri: str | None = None) -> Tracker:
    """A Tracker on an experiment that must already exist (ConfigError otherwise); default URI: MLflow's own."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # Opening would create an empty store there; a reader must not leave files behind.
        raise ConfigError(f"no MLflow store at {uri.removeprefix('sqlite:///')!r}; run a sweep first or check "
                          "--tracking-uri")
    check_sqlite_store(uri)
    check_tracking_server(uri)
    try:
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot use MLflow tracking store {uri!r}: {first}") from None
    if exp is None or exp.lifecycle_stage == "deleted":
        raise ConfigError(f"no MLflow experiment {experiment!r} in {uri!r}; run a sweep first or check --tracking-uri")
    return Tracker(uri, exp.experiment_id)


def finished_runs(tracker: Tracker, stage: str) -> list[dict[str, Any]]:
    """Every FINISHED run of one stage in the tracker's experiment: {"run_id", "tags", "params"}, oldest first."""
    runs = sorted(tracker.stored(("tags", "params"), status="FINISHED", stage=stage), key=lambda r: r.start_time or 0)
    return [{"run_id": r.run_id, "tags": r.tags, "params": r.params} for r in runs]


def download_artifacts(tracker: Tracker, run_id: str, dst: str | os.PathLike, names: Iterable[str],
                       required: Iterable[str] = (PREDICTIONS_ARTIFACT,)) -> Path:
    """Download the named top-level artifacts of a run into `dst` (absent optional ones skipped); returns `dst`."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    present = {a.path for a in tracker.client.list_artifacts(run_id)}
    missing = [n for n in required if n not in present]
    if missing:
        raise ConfigError(f"MLflow run {run_id} lacks artifact(s) {', '.join(missing)}")
    for name in names:
        if name in present:
            tracker.download(run_id, name, dst)
    return dst


def log_finished_run(tracker: Tracker, name: str, tags: dict[str, Any], params: dict[str, Any],
                     metrics: dict[str, float], folder: str | os.PathLike | None = None,
                     history: Iterable[tuple[int, dict[str, float]]] = ()) -> str:
    """One complete run: tags, params, metrics (plus per-step `history`), the files of `folder`; ends FINISHED."""
    run_id = tracker.start(name, tags, params)
    try:
        tracker.log_metrics(run_id, metrics)
        tracker.log_history(run_id, history)
        if folder is not None:
            tracker.log_dir(run_id, folder)
    except BaseException:
        tracker.client.set_terminated(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    return run_id
