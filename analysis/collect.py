"""MLflow -> one tidy DataFrame. The runs come from the fast readers of `analysis.store_readers` (SQL for
`sqlite:` and `postgresql:` stores, plain JSON from a tracking server), or through MLflow's own search API
(`MlflowClient.search_runs`) for any other store: the same runs either way.

Reads what a sweep leaves in an experiment (README.md, "What a sweep leaves in MLflow"): runs tagged
`noharm.stage` (search / evaluate / compose / stress), `noharm.dataset`,
`noharm.attribute`, `noharm.method`, `noharm.seed`, `noharm.candidates`,
`noharm.groups`, ... and metrics `{split}/{candidate}/{metric}`. Only FINISHED
evaluate and compose runs feed the tables (search runs never do); FAILED runs are
counted, not read. Stress runs contribute the rows of their `stress.parquet`.

The tidy table has one row per number: run, stage, dataset, target, attribute,
method, strategy, candidate, entry, primary, seed, split, group, metric, value,
where split is val / test / shift:<name> (trial metrics), cost (`cost/*`, candidate "") or
selection (`selection/*` of compose runs), and group is "overall", a group name,
"worst" or "gap".
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

import pandas as pd

from noharm.analysis.record import (
    COMPOSE, EVALUATE, OBJECTIVE_METRIC, SEARCH, SEARCH_CELL_TAG, SEARCH_SPACE_TAG, SEARCH_TRIAL_TAG, STRESS,
    STRESS_ARTIFACT, STRESS_COLUMNS, TABLE_STAGES, TAG, is_scored, metric_name, parse_metric, primary_candidate,
)
from noharm.analysis.store_readers import (
    SERVER_SCHEMES, StoredRun, search_all, server_runs, server_unreachable, sql_experiment_runs, sqlite_path, stored_run,
)

# Hyperparameters of the ERM reference that table captions state (its recipe).
REFERENCE_PARAMS = ("optimizer", "lr", "weight_decay", "epochs", "batch_size", "backbone")
CONNECT_TIMEOUT = 5.0  # seconds a tracking server has to answer before the report says it is not reachable
TIDY_COLUMNS = ("run", "stage", "dataset", "target", "attribute", "method", "strategy", "candidate", "entry",
                "primary", "seed", "split", "group", "metric", "value")
RUN_COLUMNS = ("run", "status", "stage", "dataset", "target", "attribute", "method", "strategy", "seed",
               "candidates", "groups", "scenario", "git_commit", "start_time")
REFERENCE_COLUMNS = ("dataset", "target", "attribute", "seed", "param", "value")
# FINISHED search and evaluate runs, for the settings table (one row per run; params long-form in PARAM_COLUMNS).
TRIAL_COLUMNS = ("run", "stage", "dataset", "target", "attribute", "method", "seed", "key", "search_trial",
                 "objective", "search_space", "search_cell", "start_time")
PARAM_COLUMNS = ("run", "param", "value")


class AnalysisError(ValueError):
    """Bad input to the analysis (missing store or experiment, malformed artifacts): one line saying what to do."""


@dataclass
class Collection:
    """Everything the report needs from one experiment."""

    experiment: str
    experiment_id: str
    tracking_uri: str
    tidy: pd.DataFrame
    runs: pd.DataFrame  # one row per run of every stage and status (RUN_COLUMNS)
    stress: pd.DataFrame  # the rows of every stress run's stress.parquet, plus `run`
    notes: list[str] = field(default_factory=list)
    # The ERM reference's logged hyperparameters: dataset, target, attribute, seed, param, value.
    reference: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REFERENCE_COLUMNS))
    # FINISHED search and evaluate runs (TRIAL_COLUMNS) and their params (PARAM_COLUMNS): the settings table.
    trials: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRIAL_COLUMNS))
    params: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PARAM_COLUMNS))


def is_local(uri: str) -> bool:
    """True for stores without a web server of their own (sqlite, file paths)."""
    return not uri.startswith(("http://", "https://", "databricks"))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI address of a run: the tracking server's for http(s) stores, else `mlflow ui`'s default."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def open_experiment(experiment: str, tracking_uri: str):
    """(MlflowClient, Experiment) for an existing experiment; AnalysisError with what to do otherwise."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        # MLflow would silently create an empty database here; a report of nothing helps nobody.
        raise AnalysisError(f"no MLflow store at {db} (from --tracking-uri {tracking_uri!r}); "
                            "point it at the sweep's mlflow.db, e.g. sqlite:///$PWD/results/mlflow.db")
    if tracking_uri.startswith(SERVER_SCHEMES):
        # MLflow's client would retry a dead server for minutes (4.4 min on a refused port) before saying so.
        reason = server_unreachable(tracking_uri, CONNECT_TIMEOUT)
        if reason is not None:
            raise AnalysisError(f"MLflow tracking server {tracking_uri} is not reachable ({reason}); start it "
                                "or fix --tracking-uri")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as exc:
        raise AnalysisError(f"cannot read MLflow tracking store {tracking_uri!r}: {_first_line(exc)}") from None
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no MLflow experiment {experiment!r} in {tracking_uri!r}; "
                            f"experiments there: {', '.join(names) or 'none'} (check --experiment / --tracking-uri)")
    return client, exp


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_runs(experiment: str, uri: str) -> tuple[str, list[StoredRun], Any]:
    """(experiment id, every active run, the MlflowClient used or None) of an experiment: by SQL for
    `sqlite:` / `postgresql:` stores, as plain JSON from a tracking server, through MLflow's search API for
    any other store (and for a store the fast readers do not know, which MLflow then explains)."""
    found = sql_experiment_runs(uri, experiment)
    if found is not None:
        return found[0], found[1], None
    from mlflow.exceptions import MlflowException

    client, exp = open_experiment(experiment, uri)
    experiment_id = str(exp.experiment_id)
    try:
        runs = server_runs(client, experiment_id)
        if runs is None:
            runs = [stored_run(r) for r in search_all(client, experiment_id)]
    except MlflowException as exc:  # the store went away or timed out mid-read
        raise AnalysisError(f"cannot read the runs of experiment {experiment!r} from {uri!r}: "
                            f"{_first_line(exc)}") from None
    return experiment_id, runs, client


def _groups(tags: dict[str, str]) -> list[str]:
    try:
        groups = json.loads(tags.get(f"{TAG}groups") or "[]")
    except json.JSONDecodeError:
        return []
    return [str(g) for g in groups] if isinstance(groups, list) else []


def _seed(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def run_record(run: StoredRun) -> dict[str, Any]:
    """One row of the runs table from a StoredRun."""
    tags = run.tags
    return {
        "run": run.run_id, "status": run.status, "stage": tags.get(f"{TAG}stage", ""),
        "dataset": tags.get(f"{TAG}dataset", ""), "target": tags.get(f"{TAG}target", ""),
        "attribute": tags.get(f"{TAG}attribute", ""), "method": tags.get(f"{TAG}method", ""),
        "strategy": tags.get(f"{TAG}strategy", ""), "seed": _seed(tags.get(f"{TAG}seed", "")),
        "candidates": tags.get(f"{TAG}candidates", ""), "groups": tags.get(f"{TAG}groups", ""),
        "scenario": tags.get(f"{TAG}scenario", ""), "git_commit": tags.get(f"{TAG}git_commit", ""),
        "start_time": int(run.start_time or 0),
    }


def entry_label(stage: str, method: str, strategy: str, candidate: str, primary: str) -> str:
    """The row name of a (run, candidate) in tables: `method`, `method [candidate]` or `method + strategy`.

    The `experts` and `erm` copies inside a composition repeat the evaluate runs' numbers, so they get "".
    """
    if stage == COMPOSE:
        return f"{method} + {strategy}" if candidate == primary else ""
    return method if candidate == primary else f"{method} [{candidate}]"


def _metric_cells(name: str, group_of: dict[str, str], stage: str, method: str, strategy: str,
                  primary: str) -> tuple | None:
    """(candidate, entry, primary flag, split, group, metric) of one metric of a run, or None when ignored."""
    parsed = parse_metric(name, group_of)
    if parsed is None:
        return None
    split, candidate, metric, group = parsed
    if split == "selection":
        candidate = primary  # the selector's per-group choice belongs to the selected candidate
    # cost and selection numbers describe the run, so they carry the run's own row name
    label = entry_label(stage, method, strategy, candidate if is_scored(split) else primary, primary)
    return candidate, label, candidate == primary or split == "cost", split, group, metric


def tidy_rows(record: dict[str, Any], metrics: dict[str, float], memo: dict | None = None) -> list[tuple]:
    """Tidy rows (in TIDY_COLUMNS order) of one evaluate or compose run.

    `memo` (one dict shared over the runs of a collection) keeps what each metric name means for runs of
    the same kind: the seeds of a method log the same names, so each is parsed once, not once per seed.
    """
    primary = primary_candidate(record["stage"], record["candidates"], record["strategy"])
    kind = (record["groups"], record["stage"], record["method"], record["strategy"], primary)
    meanings = (memo if memo is not None else {}).setdefault(kind, {})
    group_of = None
    head = (record["run"], record["stage"], record["dataset"], record["target"], record["attribute"],
            record["method"], record["strategy"])
    seed = record["seed"]
    rows = []
    for name, value in metrics.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if name not in meanings:
            if group_of is None:
                group_of = {metric_name(g): g for g in _groups({f"{TAG}groups": record["groups"]})}
            meanings[name] = _metric_cells(name, group_of, *kind[1:])
        cells = meanings[name]
        if cells is None:
            continue
        candidate, label, is_primary, split, group, metric = cells
        rows.append((*head, candidate, label, is_primary, seed, split, group, metric, float(value)))
    return rows


@contextmanager
def _quiet_downloads():
    """No per-file progress bars on stderr while the report downloads artifacts."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder of a run's artifacts when its artifact URI is a path on this machine (`file:` or no scheme),
    else None (a tracking server, S3, ...: those go through MLflow's download API)."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path, or a Windows drive letter
        return Path(artifact_uri)
    return None


def _read_stress(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    missing = [c for c in STRESS_COLUMNS if c not in frame.columns]
    if missing:
        raise AnalysisError(f"{STRESS_ARTIFACT} of MLflow run {run_id} lacks column(s) {', '.join(missing)}; "
                            "rerun `noharm stress` with this version of noharm")
    frame.insert(0, "run", run_id)
    return frame


def _stress_file(client, run: StoredRun, tmp: Path) -> Path | None:
    """The run's stress.parquet on this machine (None when the run has none).

    Artifacts on this machine's file system are read where they lie: listing and copying each run's
    artifacts through `MlflowClient` cost ~15 ms a run (1.5 s of the default suite's report, 108 stress
    runs) for files pandas can open in place. Other artifact stores are downloaded through MLflow.
    """
    folder = local_artifact_dir(run.artifact_uri)
    if folder is not None:
        path = folder / STRESS_ARTIFACT
        return path if path.is_file() else None
    run_id = run.run_id
    if STRESS_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    return Path(client.download_artifacts(run_id, STRESS_ARTIFACT, str(tmp / run_id)))


def _stress_frame(tracking_uri: str, runs: list[StoredRun], client=None) -> pd.DataFrame:
    frames = []
    with tempfile.TemporaryDirectory(prefix="noharm-report-") as tmp, _quiet_downloads():
        for run in runs:
            if client is None and local_artifact_dir(run.artifact_uri) is None:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=tracking_uri)
            path = _stress_file(client, run, Path(tmp))
            if path is not None:
                frames.append(_read_stress(pd.read_parquet(path), run.run_id))
    if not frames:
        return pd.DataFrame(columns=["run", *STRESS_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    out["seed"] = out["seed"].astype("int64")
    out["severity"] = out["severity"].astype("float64")
    return out


def collect(experiment: str, tracking_uri: str | None = None, stress: bool = True) -> Collection:
    """Read one experiment into a Collection (tidy table, runs table, stress rows, notes).

    Duplicate FINISHED runs of one (stage, dataset, target, attribute, method,
    strategy, seed) keep the oldest, as the sweep's resume does. Rows are sorted,
    so the same store always gives the same frames.
    """
    if tracking_uri:
        uri = tracking_uri
    else:
        import mlflow

        uri = mlflow.get_tracking_uri()
    experiment_id, all_runs, client = read_runs(experiment, uri)
    records = [run_record(r) for r in all_runs]
    by_id = {r.run_id: r for r in all_runs}
    runs = pd.DataFrame(records, columns=list(RUN_COLUMNS))
    runs = runs.sort_values(["stage", "dataset", "target", "attribute", "method", "strategy", "seed", "start_time",
                             "run"], na_position="last", kind="mergesort").reset_index(drop=True)
    notes: list[str] = []
    failed = runs[runs["status"] == "FAILED"]
    if len(failed):
        per = ", ".join(f"{s or '(no stage)'}: {n}" for s, n in failed.groupby("stage")["run"].count().items())
        notes.append(f"{len(failed)} FAILED run(s) ignored ({per})")
    usable = runs[(runs["status"] == "FINISHED") & runs["stage"].isin(TABLE_STAGES)]
    bad = usable[usable["seed"].isna() | (usable["dataset"] == "") | (usable["method"] == "")]
    if len(bad):
        notes.append(f"{len(bad)} finished run(s) without noharm.dataset / noharm.method / noharm.seed tags ignored")
        usable = usable.drop(bad.index)
    keys = ["stage", "dataset", "target", "attribute", "method", "strategy", "seed"]
    dup = usable.duplicated(keys, keep="first")  # sorted by start time within a key: the oldest stays
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicate finished run(s) ignored (the oldest of each key is used)")
        usable = usable[~dup]
    rows: list[tuple] = []
    memo: dict = {}
    for record in usable.to_dict("records"):
        record["seed"] = int(record["seed"])
        rows.extend(tidy_rows(record, by_id[record["run"]].metrics, memo))
    tidy = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    tidy = tidy.astype({"seed": "int64", "value": "float64", "primary": "bool"})
    tidy = tidy.sort_values(["dataset", "target", "attribute", "stage", "method", "strategy", "candidate", "seed",
                             "split", "metric", "group", "run"], kind="mergesort").reset_index(drop=True)
    reference = reference_params(usable, by_id)
    stress_runs = [by_id[r] for r in runs[(runs["status"] == "FINISHED") & (runs["stage"] == STRESS)]["run"]]
    stress_rows = _stress_frame(uri, stress_runs, client) if stress else pd.DataFrame(columns=["run", *STRESS_COLUMNS])
    trials, params = trial_frames(runs, by_id)
    return Collection(experiment=experiment, experiment_id=experiment_id, tracking_uri=uri, tidy=tidy,
                      runs=runs, stress=stress_rows, notes=notes, reference=reference, trials=trials, params=params)


def trial_frames(runs: pd.DataFrame, by_id: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, params) of every FINISHED search and evaluate run: what the settings table reads (the search
    space and search cell tags, the trial number, the validation objective, every logged param)."""
    chosen = runs[(runs["status"] == "FINISHED") & runs["stage"].isin([SEARCH, EVALUATE])]
    rows, params = [], []
    for r in chosen.to_dict("records"):
        stored = by_id[r["run"]]
        tags = stored.tags
        trial = tags.get(f"{TAG}{SEARCH_TRIAL_TAG}")
        objective = stored.metrics.get(OBJECTIVE_METRIC)
        rows.append((r["run"], r["stage"], r["dataset"], r["target"], r["attribute"], r["method"], r["seed"],
                     tags.get(f"{TAG}key", ""), _seed(trial) if trial is not None else None,
                     math.nan if objective is None else float(objective), tags.get(f"{TAG}{SEARCH_SPACE_TAG}", ""),
                     tags.get(f"{TAG}{SEARCH_CELL_TAG}", ""), r["start_time"]))
        params += [(r["run"], k, str(v)) for k, v in sorted(stored.params.items())]
    trials = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS)).astype({"objective": "float64"})
    return trials, pd.DataFrame(params, columns=list(PARAM_COLUMNS))


def reference_params(usable: pd.DataFrame, by_id: dict) -> pd.DataFrame:
    """The logged REFERENCE_PARAMS of every used ERM evaluate run (params not logged were ERM's defaults)."""
    erm = usable[(usable["stage"] == EVALUATE) & (usable["method"] == "erm")]
    rows = [(r["dataset"], r["target"], r["attribute"], int(r["seed"]), k, str(v))
            for r in erm.to_dict("records") for k, v in sorted(by_id[r["run"]].params.items())
            if k in REFERENCE_PARAMS]
    frame = pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
    return frame.sort_values(list(REFERENCE_COLUMNS), kind="mergesort").reset_index(drop=True)


def stage_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs per stage and status (rows: stage; columns: statuses), for the report's index."""
    if runs.empty:
        return pd.DataFrame()
    table = runs.assign(stage=runs["stage"].replace("", "(none)")).pivot_table(
        index="stage", columns="status", values="run", aggfunc="count", fill_value=0)
    return table.sort_index().reindex(sorted(table.columns), axis=1)


def seeds_of(tidy: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in tidy["seed"].unique())


def iter_tasks(tidy: pd.DataFrame) -> Iterable[tuple[str, str, str]]:
    """(dataset, target, attribute) triples in sorted order."""
    keys = tidy[["dataset", "target", "attribute"]].drop_duplicates().sort_values(["dataset", "target", "attribute"])
    return [tuple(k) for k in keys.itertuples(index=False, name=None)]
