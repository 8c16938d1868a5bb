"""`noharm run`: a suite through Ray Tune (Optuna search, evaluation on every seed, selector composition) into MLflow.

The flow:
1. load and validate the suite; check every dataset's files (fail in a second on a wrong --data-root),
   the tracking store and the Ray address (`bench.sweep.preflight`), before anything is created;
2. take the driver's lease (`bench.sweep.lease`: a second driver is refused) and open the MLflow
   experiment (creating the store in the driver, before any trial);
3. end runs a killed driver left RUNNING; read what is already FINISHED;
4. one Tuner whose searcher (`bench.sweep.searcher`) proposes search, evaluate and compose trials,
   skipping every key already FINISHED, as many at once as the machine holds (`bench.sweep.capacity`;
   the first line says how many and on what), while `bench.sweep.progress` prints one status line with
   an ETA;
5. report: the comparison table (`bench.sweep.report`), where the results are, and the
   `mlflow ui` command. Exit 0 when everything finished, 1 when some trial failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow  # noqa: F401  (configures its logger on import; quiet_loggers lowers it)
import optuna

from noharm.analysis.record import EVALUATE, SEARCH, TAG
from noharm.bench.sweep.keys import CODE_VERSION
from noharm.bench.sweep.lease import LeaseHeld, lease_record, lock_local_store
from noharm.bench.sweep.preflight import preflight
from noharm.bench.sweep.report import comparison
from noharm.bench.sweep.suite import Suite, check_files
from noharm.bench.tracking import Tracker, default_uri, git_commit, is_database_store, is_local_store

# Ray keeps Unix sockets under its temp folder; their paths must stay under ~107 characters.
MAX_RAY_TMP_LEN = 60


@dataclass
class SweepOutcome:
    """What a sweep did: counts per stage, failures, where the results are."""

    out: Path
    tracking_uri: str
    experiment: str
    experiment_id: str
    counts: dict[str, Any]
    failures: list = field(default_factory=list)
    elapsed: float = 0.0
    table: Any = None
    interrupted: bool = False  # stopped before the grid was complete (Ctrl-C)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def ui_command(self) -> str:
        if is_database_store(self.tracking_uri):
            return f"mlflow ui --backend-store-uri {self.tracking_uri}"
        return f"a browser at {self.tracking_uri} (experiment {self.experiment!r})"


def prepare_environment(address: str | None, out: Path) -> Path | None:
    """Quiet, self-contained Ray and MLflow; must run before Ray is imported (Ray reads some at import).

    Local Ray (no address) keeps every socket on 127.0.0.1 and its temp files inside
    the run folder; joining a cluster changes neither. Existing values win.
    Returns the temp folder this call chose for Ray, if any.
    """
    for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                       ("RAY_AUTH_MODE", "disabled"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                       ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("RAY_DEDUP_LOGS", "0")):
        os.environ.setdefault(key, value)
    ray = sys.modules.get("ray")
    if not address and not (ray is not None and ray.is_initialized()):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "RAY_TMPDIR" in os.environ:
            return None
        tmp = ray_temp_dir(out)
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["RAY_TMPDIR"] = str(tmp)
        os.environ.setdefault("TMPDIR", str(tmp))
        return tmp
    return None


def quiet_loggers() -> None:
    """MLflow's table creation, Alembic's migrations, Optuna's study notes and Tune's notes stay quiet."""
    for name in ("mlflow", "alembic", "ray", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune warns about result files we do not write (auto loggers are off); its errors still show.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def ray_temp_dir(out: Path) -> Path:
    """Ray's temp folder: inside the run folder unless that path is too long for Ray's sockets."""
    inside = out.absolute() / "tmp"
    # Ray's CoreWorker cannot take a non-ASCII temp path: such a run folder keeps Ray's files elsewhere.
    if len(str(inside)) <= MAX_RAY_TMP_LEN and str(inside).isascii():
        return inside
    return Path(tempfile.gettempdir()) / f"noharm-ray-{uuid.uuid5(uuid.NAMESPACE_URL, str(inside)).hex[:10]}"


def searcher_from_store(suite: Suite, tracker: Tracker, invocation: str):
    """A searcher rebuilt from what MLflow holds after a sweep, with this invocation's FAILED runs as failures."""
    from noharm.bench.sweep.searcher import (  # lazy: Ray reads its environment when imported (prepare_environment first)
        Failure, SweepSearcher, prior_search_results,
    )

    finished = tracker.finished_index(suite.name)
    prior = prior_search_results([r for (stage, _), r in finished.items() if stage == SEARCH], suite, CODE_VERSION)
    searcher = SweepSearcher(suite, finished, prior)
    failed = tracker.runs(suite=suite.name, status="FAILED", extra=f"tags.`{TAG}invocation` = '{invocation}'")
    for run in failed:
        tags = run.data.tags
        stage = tags.get(f"{TAG}stage", EVALUATE)
        label = f"{tags.get(f'{TAG}cell', run.info.run_name)} s{tags.get(f'{TAG}seed', '?')}"  # as the live labels
        searcher.failures.append(Failure(stage, label, tags.get(f"{TAG}error", "")))
        searcher.counts[stage].failed += 1
    return searcher


def announce(say, suite: Suite, searcher, capacity, uri: str, experiment: str, address: str | None,
             resumed: bool, stale: int) -> None:
    """The run's first lines: trials per stage, how many run at once and on what, where they are tracked."""
    planned = {k: v.planned for k, v in searcher.counts.items()}
    say(f"suite {suite.name}: {planned['search']} search, {planned['evaluate']} evaluate, "
        f"{planned['compose']} compose trials" + (f"; {capacity.describe()}" if capacity else "")
        + f"; tracking {uri} (experiment {experiment!r})")
    if address and is_local_store(uri):
        say("note: a local sqlite store is only reachable by trials on this machine; on a multi-node "
            "cluster pass --tracking-uri http://HOST:PORT (an MLflow server)")
    if resumed:
        # Counted as the progress line counts them ("N already in MLflow"): trials, not runs.
        skipped = sum(c.skipped for c in searcher.counts.values())
        say(f"resuming: {skipped} trials already FINISHED in MLflow are skipped"
            + (f"; {stale} interrupted runs marked KILLED" if stale else ""))


def tune_storage(out: Path, ray_tmp: Path | None) -> Path:
    """Where Tune keeps its experiment state: `<out>/ray`, or beside Ray's temp files for a non-ASCII --out."""
    if ray_tmp is not None and not str(out).isascii():
        return ray_tmp / "tune"
    return out / "ray"


def start_ray(address: str | None) -> bool:
    """Start a local Ray on 127.0.0.1, or join `address`; returns True when this call started it."""
    import ray  # lazy: Ray reads its environment when imported (prepare_environment first)

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="error")
        return True
    tmp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
    ray.init(address="local", log_to_driver=False, logging_level="error", include_dashboard=False,
             _temp_dir=str(tmp / "ray"))
    return True


def stop_ray() -> None:
    import ray  # lazy: imported by start_ray already; Ray reads its environment when imported

    ray.shutdown()


def run_suite(suite: Suite, out: str | os.PathLike, tracking_uri: str | None = None, experiment: str | None = None,
              address: str | None = None, max_concurrent: int | None = None, device: str = "auto",
              quiet: bool = False) -> SweepOutcome:
    """Run every trial of `suite` that MLflow does not already hold as FINISHED; see the module docstring."""
    t0 = time.monotonic()
    check_files(suite)  # a missing dataset fails before anything is created or started
    out = Path(out).absolute()
    uri = tracking_uri or suite.tracking.uri or default_uri(out)
    exp_name = experiment if experiment is not None else (suite.tracking.experiment or suite.name)
    preflight(uri, exp_name, address, out)  # bad settings and dead services: one line, nothing created
    tracker, lease = open_store(out, uri, exp_name, suite.name)
    try:
        return _run_locked(suite, out, tracker, exp_name, address, max_concurrent, device, quiet, t0)
    finally:
        lease.release()


def open_store(out: Path, uri: str, experiment: str, suite: str):
    """Create --out, take the driver's lease and open the experiment; on a failed start (other than a held
    lease) remove what this call created, so a bad store leaves no half-made run folder."""

    existed = out.exists()
    before = set(out.iterdir()) if existed else set()
    out.mkdir(parents=True, exist_ok=True)
    lease = None
    try:
        lease = lock_local_store(uri, experiment, suite)
        # A database store has no artifact storage of its own (MLflow would use ./mlruns of each process).
        artifacts = (out / "artifacts").as_uri() if is_database_store(uri) else None
        tracker = Tracker.open(uri, experiment, artifact_location=artifacts)
        if lease is None:
            lease = lease_record(tracker, experiment, suite)
    except LeaseHeld:
        raise  # the other driver's files are not ours to remove
    except BaseException:
        if lease is not None:
            lease.release()
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for path in set(out.iterdir()) - before:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    return tracker, lease


def _run_locked(suite: Suite, out: Path, tracker: Tracker, exp_name: str, address: str | None,
                max_concurrent: int | None, device: str, quiet: bool, t0: float) -> SweepOutcome:
    """The sweep proper, with the lease held (see `run_suite`)."""
    ray_tmp = prepare_environment(address, out)
    # Imported only now, on purpose: Ray reads its environment (set just above) when imported, and the
    # searcher and trainables import Ray.
    from ray import tune  # lazy: see above

    from noharm.bench.sweep.capacity import plan, ray_nodes  # lazy: see above
    from noharm.bench.sweep.progress import Progress  # lazy: see above
    from noharm.bench.sweep.searcher import SweepSearcher, prior_search_results  # lazy: see above
    from noharm.bench.sweep.trials import tune_trainable  # lazy: see above

    quiet_loggers()
    uri = tracker.uri
    stale = tracker.close_stale(suite.name)
    finished = tracker.finished_index(suite.name)
    prior = prior_search_results([r for (stage, _), r in finished.items() if stage == SEARCH], suite, CODE_VERSION)
    searcher = SweepSearcher(suite, finished, prior)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))  # noqa: E731
    invocation = uuid.uuid4().hex[:12]
    client = bool(address and address.startswith("ray://"))
    context = {"uri": uri, "experiment_id": tracker.experiment_id, "suite": suite.name,
               "invocation": invocation, "git_commit": git_commit(), "code_version": CODE_VERSION,
               "retries": suite.retries, "device": device, "keep_models": suite.keep_models}
    started, capacity = False, None
    try:
        if not searcher.is_done():  # a finished suite needs no Ray at all
            started = start_ray(address)
            capacity = plan(ray_nodes(), suite.resources.cpu, suite.resources.gpu, suite.max_concurrent,
                            max_concurrent)
        announce(say, suite, searcher, capacity, uri, exp_name, address, resumed=bool(finished or stale), stale=stale)
        if capacity is not None:
            progress = Progress(searcher, quiet=quiet, concurrency=capacity.trials)
            resources = {"cpu": capacity.cpu_per_trial, "gpu": capacity.gpu_per_trial}
            trainable = tune.with_resources(tune.with_parameters(tune_trainable, context=context), resources)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=-1, reuse_actors=True,
                    max_concurrent_trials=capacity.tune_limit,
                    trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id,
                ),
                run_config=tune.RunConfig(
                    name=f"{suite.name}-{invocation}", storage_path=str(tune_storage(out, ray_tmp)), verbose=0,
                    callbacks=[progress], log_to_file=False,
                    # A crashed worker is retried by Tune; a raised error is retried inside the trial.
                    failure_config=tune.FailureConfig(max_failures=suite.retries),
                ),
            )
            tuner.fit()
            progress.finish()
        if client:
            # Under Ray Client, Tune runs the Tuner, and so this searcher, on the cluster: the local copy
            # saw nothing. The Tuner returned, so runs still RUNNING lost their worker; MLflow holds the rest.
            tracker.close_invocation(suite.name, invocation, status="FAILED")
            searcher = searcher_from_store(suite, tracker, invocation)
        else:
            # Runs still RUNNING now lost their worker (FAILED), or were stopped by Ctrl-C (KILLED).
            tracker.close_invocation(suite.name, invocation, status="FAILED" if searcher.is_done() else "KILLED")
    finally:
        if started:
            stop_ray()
        if ray_tmp is not None:
            for key in ("RAY_TMPDIR", "TMPDIR"):  # this process goes on without them
                if os.environ.get(key) == str(ray_tmp):
                    del os.environ[key]
            tempfile.tempdir = None
            if out not in ray_tmp.parents:
                shutil.rmtree(ray_tmp, ignore_errors=True)  # a fallback folder outside the run folder


    table = comparison(tracker.frame(suite.name))
    if not table.empty:
        table.to_csv(out / "summary.csv", index=False)
    # A rebuilt searcher (Ray Client) counts a failed search trial as not done: that is a failure, not Ctrl-C.
    interrupted = not searcher.is_done() and not (client and searcher.failures)
    return SweepOutcome(out=out, tracking_uri=uri, experiment=exp_name, experiment_id=tracker.experiment_id,
                        counts=searcher.counts, failures=list(searcher.failures),
                        elapsed=time.monotonic() - t0, table=table, interrupted=interrupted)
