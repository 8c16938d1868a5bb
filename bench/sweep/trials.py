"""What one sweep trial does, in plain Python (Ray Tune calls `tune_trainable`; tests may call `execute`).

A sweep trial is a `Job` (built by `bench.sweep.searcher` in the driver): its stage, cell, key, run name
and tags, and for search / evaluate the trial's resolved `TrialSpec` (`copy_from`: on the search seed,
the best search run to copy), for compose the two runs and the strategies. It crosses to the worker as
a plain dict (`Job.to_dict`); the worker rebuilds it with `Job.from_dict`, which refuses an unknown key.

Every job is idempotent: a key already FINISHED in MLflow is reported, not rerun,
so a trial that a killed driver left behind never yields a second FINISHED run.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ray import tune

from noharm.analysis import predictions as P
from noharm.analysis.record import COMPOSE, EVALUATE, PREDICTIONS_ARTIFACT, SEARCH, TAG, selected
from noharm.bench.compose import ERM_CANDIDATE, compose
from noharm.bench.errors import ConfigError
from noharm.bench.objectives import MINIMISED_SUFFIXES, canonical
from noharm.bench.spec import TrialSpec, budget_text, refuse_unknown_keys
from noharm.bench.sweep.capacity import trial_device
from noharm.bench.tracking import Tracker
from noharm.bench.trial import run_trial, save_trial, score_predictions
from noharm.methods import get_method

# Reported to Optuna for an undefined objective (e.g. worst-group AUC of a one-class group).
WORST_OBJECTIVE = -1e9

_trackers: dict[tuple[str, str], Tracker] = {}
STAGES = (SEARCH, EVALUATE, COMPOSE)


@dataclass(frozen=True)
class Job:
    """One sweep trial as the driver hands it to a worker."""

    stage: str  # search, evaluate or compose
    cell: str  # dataset/attribute/method
    key: str  # trial key (compose: the method run's key; each strategy has its own in `compose`)
    name: str  # MLflow run name
    label: str  # how progress and failure lines name it
    tags: dict[str, Any] = field(default_factory=dict)  # noharm.* run tags: dataset, target, seed, ...
    trial: TrialSpec | None = None  # search / evaluate
    copy_from: str | None = None  # evaluate on the search seed: the best search run, copied not retrained
    compose: dict[str, Any] | None = None  # compose: the two runs, strategies, keys, metric, candidate

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"sweep job: unknown stage {self.stage!r}; one of {', '.join(STAGES)}")
        if (self.trial is None) == (self.stage != COMPOSE) or (self.compose is None) == (self.stage == COMPOSE):
            raise ConfigError(f"sweep job: a {self.stage} job needs "
                              f"{'compose settings' if self.stage == COMPOSE else 'a trial spec'} and nothing else")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for Ray's trial config; `from_dict` reads it back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["trial"] = self.trial.to_dict() if self.trial is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        """The job `to_dict` wrote; an unknown key (here or in the trial spec) is one ConfigError line."""
        refuse_unknown_keys("sweep job", data, cls)
        trial = data.get("trial")
        return cls(**{**data, "trial": TrialSpec.from_dict(trial) if trial is not None else None})


def tracker_for(context: dict[str, Any]) -> Tracker:
    """One Tracker per worker process (reused across trials with reuse_actors)."""
    k = (context["uri"], context["experiment_id"])
    if k not in _trackers:
        _trackers[k] = Tracker(*k)
    return _trackers[k]


def tune_trainable(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The Ray Tune function trainable: run the job, report one result (a job this worker cannot read is a
    failed trial whose error line says why, e.g. an unknown key from a driver of another version)."""
    try:
        job = Job.from_dict(config["job"])
    except ConfigError as exc:
        tune.report({"run_id": "", "objective": WORST_OBJECTIVE, "failed": 1, "skipped": 0, "error": str(exc)})
        return
    tune.report(execute(job, context))


def execute(job: Job, context: dict[str, Any]) -> dict[str, Any]:
    """Run one job against MLflow; returns {"run_id", "objective", "failed", "skipped", "error"}."""
    tracker = tracker_for(context)
    if job.stage == COMPOSE:
        return run_compose(job, context, tracker)
    done = tracker.find_finished(context["suite"], job.stage, job.key)
    if done is not None:
        return {"run_id": done.info.run_id, "objective": stored_objective(done.data.metrics),
                "failed": 0, "skipped": 1, "error": ""}
    if job.copy_from:
        run_id = tracker.copy(job.copy_from, job.name, base_tags(job, context))
        objective = stored_objective(tracker.get(run_id).data.metrics)
        return {"run_id": run_id, "objective": objective, "failed": 0, "skipped": 0, "error": ""}
    return run_training(job, context, tracker)


def base_tags(job: Job, context: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """The noharm.* tags of a job's run (`key`: a compose strategy's own key instead of the job's)."""
    tags = {f"{TAG}{k}": v for k, v in job.tags.items()}
    tags.update({f"{TAG}suite": context["suite"], f"{TAG}stage": job.stage, f"{TAG}key": key or job.key,
                 f"{TAG}git_commit": context["git_commit"], f"{TAG}invocation": context["invocation"],
                 f"{TAG}code_version": context["code_version"], f"{TAG}cell": job.cell,
                 f"{TAG}node": ray_node()})
    return tags


def assigned_gpus() -> list | None:
    """The GPU ids Ray gave this trial ([] for none); None outside Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return list(ray.get_gpu_ids())


def ray_node() -> str:
    """The id of the Ray node running this trial ("" outside Ray): which machine ran a run, or died under it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def trial_params(cfg: TrialSpec) -> dict[str, Any]:
    """MLflow params of a trial: every resolved hyperparameter, the budget with its source, options, settings."""
    params = dict(cfg.hparams)
    params["trial.budget"] = budget_text(cfg.dataset, cfg.budget)
    params.update({f"dataset.{k}": v for k, v in cfg.dataset_options.items()})
    params.update({"trial.objective": cfg.objective, "trial.precision": cfg.precision,
                   "trial.channels_last": cfg.channels_last, "trial.min_group_size": cfg.min_group_size})
    return params


def objective_value(metrics: dict[str, float], candidate: str, objective: str) -> float:
    """The suite's validation objective of `candidate`, higher is better (gaps negated); NaN if undefined."""
    key = canonical(objective)
    value = metrics.get(f"val/{candidate}/{key}", math.nan)
    value = math.nan if value is None else float(value)
    return -value if key.endswith(MINIMISED_SUFFIXES) else value


def stored_objective(metrics: dict[str, float]) -> float:
    value = metrics.get("objective", math.nan)
    return WORST_OBJECTIVE if value is None or not math.isfinite(value) else float(value)


def run_training(job: Job, context: dict[str, Any], tracker: Tracker) -> dict[str, Any]:
    """Train the job's trial (retrying up to `retries` times) and log it; a final failure ends FAILED."""
    cfg = job.trial
    run_id = tracker.start(job.name, base_tags(job, context), trial_params(cfg))
    attempts, errors = int(context.get("retries", 0)) + 1, []
    for attempt in range(1, attempts + 1):
        history: list[tuple[int, dict[str, float]]] = []
        try:
            result = run_trial(cfg, device=trial_device(context.get("device", "auto"), assigned_gpus()),
                               on_epoch=lambda epoch, values: history.append((epoch, dict(values))), reuse_task=True)
            break
        except Exception as exc:  # any failure of the method is recorded, the sweep goes on
            errors.append((f"attempt {attempt} of {attempts}:\n{traceback.format_exc()}", one_line(exc)))
    else:
        tracker.fail(run_id, "\n".join(tb for tb, _ in errors), errors[-1][1], attempts=len(errors))
        return {"run_id": run_id, "objective": WORST_OBJECTIVE, "failed": 1, "skipped": 0, "error": errors[-1][1]}

    candidate = get_method(cfg.method).candidates[0]
    objective = objective_value(result.metrics, candidate, cfg.objective)
    try:
        tracker.set_tags(run_id, {f"{TAG}candidates": ",".join(result.candidates),
                                  f"{TAG}groups": json.dumps(list(result.group_names)),
                                  f"{TAG}attempts": len(errors) + 1})
        tracker.log_metrics(run_id, {**result.metrics, **{f"cost/{k}": v for k, v in result.cost.items()},
                                     "objective": objective})
        tracker.log_history(run_id, [(e, {f"epoch/{k.replace('/', '_')}": v for k, v in vals.items()})
                                     for e, vals in history])
        with tempfile.TemporaryDirectory(prefix="noharm-trial-") as tmp:
            folder = save_trial(result, Path(tmp) / "trial", model=keeps_model(context, job.stage))
            tracker.log_dir(run_id, folder)
    except Exception as exc:  # storing failed (disk, server): a FAILED run, never a half-logged FINISHED one
        tracker.fail(run_id, traceback.format_exc(), f"storing the results failed: {one_line(exc)}",
                     attempts=len(errors) + 1)
        return {"run_id": run_id, "objective": WORST_OBJECTIVE, "failed": 1, "skipped": 0,
                "error": f"storing the results failed: {one_line(exc)}"}
    tracker.finish(run_id)
    finite = objective if math.isfinite(objective) else WORST_OBJECTIVE
    return {"run_id": run_id, "objective": finite, "failed": 0, "skipped": 0, "error": ""}


def keeps_model(context: dict[str, Any], stage: str) -> bool:
    """Whether a run of `stage` stores model.pt under the suite's `keep_models` (evaluate, all or none)."""
    keep = context.get("keep_models", "evaluate")
    return keep == "all" or (keep == EVALUATE and stage == EVALUATE)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_compose(job: Job, context: dict[str, Any], tracker: Tracker) -> dict[str, Any]:
    """Compose a method's evaluate run with its seed's ERM run: one MLflow run per strategy."""
    c = job.compose
    todo = {s: k for s, k in c["keys"].items()
            if tracker.find_finished(context["suite"], COMPOSE, k) is None}
    if not todo:
        return {"run_id": "", "objective": 0.0, "failed": 0, "skipped": 1, "error": ""}
    method_run = tracker.get(c["method_run"])
    tags_from_method = {k: v for k, v in method_run.data.tags.items()
                        if k.startswith(TAG) and k.split(".", 1)[1] in ("dataset", "target", "attribute", "method",
                                                                        "seed", "groups")}
    error, tb = "", ""
    try:
        composed, report, names = compose_predictions(tracker, c)
    except Exception as exc:
        error, tb = one_line(exc), traceback.format_exc()
    failed = 0
    for strategy, key in todo.items():
        tags = {**tags_from_method, **base_tags(job, context, key=key),
                f"{TAG}strategy": strategy, f"{TAG}composed_from": f"{c['method_run']},{c['erm_run']}"}
        params = {**method_run.data.params, "selection.metric": c["metric"], "selection.candidate": c["candidate"],
                  "selection.strategy": strategy}
        run_id = tracker.start(f"{job.name} {strategy}", tags, params)
        if error:
            tracker.fail(run_id, tb, error)
            failed += 1
            continue
        log_composition(tracker, run_id, composed, report[strategy], strategy, c["candidate"], names)
    return {"run_id": "", "objective": 0.0, "failed": int(failed > 0), "skipped": 0, "error": error}


def compose_predictions(tracker: Tracker, c: dict[str, Any]):
    """Download both predictions tables and compose them with every strategy (no retraining)."""
    method_preds = tracker.load_predictions(c["method_run"])
    erm_preds = tracker.load_predictions(c["erm_run"])
    composed, report = compose(method_preds, erm_preds, c["strategies"], metric=c["metric"], candidate=c["candidate"])
    return composed, report, P.group_names(composed)


def log_composition(tracker: Tracker, run_id: str, composed, report: dict[str, Any], strategy: str,
                    candidate: str, names: list[str]) -> None:
    """One strategy's run: its selected candidate next to the method's candidate and ERM."""
    keep = [candidate, ERM_CANDIDATE, selected(strategy)]
    cols = list(P.KEY_COLUMNS) + [col for cand in keep for col in composed.columns
                                  if col.startswith(f"{P.PROBA_PREFIX}{cand}/")]
    table = composed[cols]
    metrics = score_predictions(table, names)
    metrics.update({f"selection/use_expert/group:{g}": float(report["use_expert"][g]) for g in names})
    metrics.update({"selection/n_experts": report["n_experts"],
                    "selection/val_gap": report["val_gap"], "selection/val_utility": report["val_utility"]})
    tracker.set_tags(run_id, {f"{TAG}candidates": ",".join(keep), f"{TAG}groups": json.dumps(names),
                              f"{TAG}selection_status": report["status"]})
    tracker.log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory(prefix="noharm-compose-") as tmp:
        table.to_parquet(Path(tmp) / PREDICTIONS_ARTIFACT, index=False)
        (Path(tmp) / "selection.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        tracker.log_dir(run_id, tmp)
    tracker.finish(run_id)

