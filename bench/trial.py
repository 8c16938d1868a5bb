"""One trial: (dataset, attribute, method, hparams, seed) -> predictions + metrics, in plain Python.

Everything else (the CLI, Ray Tune sweeps) calls `run_trial`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from noharm.analysis import predictions as P
from noharm.analysis.diagnostics import expert_diagnostics, feature_rows, warnings_text
from noharm.analysis.metrics import evaluate
from noharm.analysis.record import CONFIG_ARTIFACT, MODEL_ARTIFACT, PREDICTIONS_ARTIFACT, SPLITS, scored_splits
from noharm.bench.compose import compose
from noharm.bench.errors import ConfigError
from noharm.bench.objectives import make_objective
from noharm.bench.spec import (  # noqa: F401  (re-exported: the budget rule's names, where callers import them)
    FROM_DATASET, FROM_METHOD, FROM_SET, REPORTED_BUDGET, TrialSpec, budget_of, budget_text, declared_budget,
    trial_hparams,
)
from noharm.bench.task import cached_load_task, load_task
from noharm.datasets import get_dataset
from noharm.datasets.base import shift_splits
from noharm.methods import FitContext, TaskData, get_method
from noharm.methods.batches import eval_batch_size

# Splits a trial scores and stores by default: validation and test (`record.SPLITS`), and every out-of-domain
# `shift:<name>` split the dataset holds; train is added for methods that declare `needs_train_predictions`
# and for trials that ask for it (`train_predictions`).
STORED_SPLITS = SPLITS
# What a trial's in-trial ERM reference takes from the method's settings: the budget and the architecture.
BUDGET_HPARAMS = ("epochs", "batch_size", "patience", "backbone", "hidden", "pretrained")
# The one trial spec (resolved once, by `TrialSpec.resolve`) and the budget rule live in `bench.spec`.
# `TrialConfig(...)` is the old name of building one from the values set for a trial.
TrialConfig = TrialSpec.resolve


@dataclass
class TrialResult:
    config: TrialSpec
    predictions: pd.DataFrame
    metrics: dict[str, float]
    group_names: tuple[str, ...]
    candidates: tuple[str, ...]
    cost: dict[str, float]
    notes: dict[str, Any]
    state_dict: dict[str, Any] = field(default_factory=dict, repr=False)


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (MB); on CUDA, peak allocated device memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def peak_rss_bytes() -> int:
    """Peak resident set size of this process, on any OS.

    POSIX: getrusage's ru_maxrss (KiB on Linux, bytes on macOS); Windows, which has no `resource`
    module: the peak working set (psutil). Where neither exists, the current RSS (a lower bound).
    """
    try:
        import resource  # POSIX only: imported here so this module imports everywhere
    except ImportError:
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def score_predictions(preds: pd.DataFrame, group_names: list[str]) -> dict[str, float]:
    """Flat metrics `{split}/{candidate}/{metric}` for every candidate on val, test and every shift split."""
    out: dict[str, float] = {}
    for split in scored_splits(preds["split"].unique()):
        rows = preds[preds["split"] == split]
        if rows.empty:
            continue
        y, g = rows["y"].to_numpy(), rows["group_id"].to_numpy()
        for cand in P.candidates(preds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # one-class groups: NaN AUC, reported in the table
                m = evaluate(y, P.proba(rows, cand), g, group_names)
            out.update({f"{split}/{cand}/{k}": float(v) for k, v in m.items()})
    return out


def stored_splits(cfg: TrialSpec, method_cls, task: TaskData | None = None) -> tuple[str, ...]:
    """The splits a trial scores and stores: validation, test and the task's shift splits, plus train when
    asked for or declared."""
    shifts = tuple(shift_splits(task.split)) if task is not None else ()
    if cfg.train_predictions or getattr(method_cls, "needs_train_predictions", False):
        return ("train", *STORED_SPLITS, *shifts)
    return (*STORED_SPLITS, *shifts)


def score_splits(predictor, task: TaskData, splits: tuple[str, ...],
                 order: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Scores of `order` (the rows of `splits`, ascending), and the rows per second of the test pass.

    Each split is scored once: validation comes back from the predictor's memory of the best
    epoch's pass when it has one. The test pass is always a fresh inference pass, so its
    rate measures inference alone.
    """
    rows = {s: task.indices(s) for s in splits}
    out: dict[str, np.ndarray] = {}
    rate = float("nan")
    for split, idx in rows.items():
        if not len(idx):
            continue
        t0 = time.perf_counter()
        part = predictor.predict_proba(task, idx)
        if split == "test":
            rate = len(idx) / max(time.perf_counter() - t0, 1e-9)
        pos = np.searchsorted(order, idx)
        for cand, proba in part.items():
            if cand not in out:
                out[cand] = np.empty((len(order), proba.shape[1]), np.float32)
            out[cand][pos] = proba
    return out, rate


def run_trial(
    cfg: TrialSpec,
    device: str = "auto",
    log: Callable[[str], None] = lambda msg: None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    reuse_task: bool = False,
) -> TrialResult:
    """Train and score one trial (its spec already resolved: nothing is resolved here). Raises on bad input
    before any training starts.

    `reuse_task`: take the task from, and leave it in, this process's cache of loaded tasks
    (`bench.task.cached_load_task`): for sweep workers, which run trial after trial on registered datasets.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    dev = resolve_device(device)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 on CPU")
    dataset = get_dataset(cfg.dataset, **cfg.dataset_options)
    method_cls = get_method(cfg.method)
    hparams, sources = cfg.hparams, cfg.sources
    method = method_cls(hparams)
    budget = cfg.budget
    log(f"budget: {budget_text(cfg.dataset, budget)}")
    if reuse_task:
        loaded = cached_load_task(dataset, cfg.dataset, cfg.dataset_options, cfg.attribute, cfg.seed, cfg.min_group_size)
    else:
        loaded = load_task(dataset, cfg.attribute, cfg.seed, cfg.min_group_size)
    task, bundle, grouping, load_seconds = loaded.task, loaded.bundle, loaded.grouping, loaded.load_seconds
    val_idx = task.indices("val")
    objective = make_objective(cfg.objective, task.y[val_idx], task.group[val_idx], list(grouping.names))
    # One inference batch for every scoring pass of this trial, sized to the input and the memory.
    eval_batch = eval_batch_size(task.input_shape, dev, method.hp.get("batch_size"))
    ctx = FitContext(device=dev, seed=cfg.seed, objective=objective, precision=cfg.precision,
                     channels_last=cfg.channels_last, started_at=t_start,
                     log=log, on_epoch=on_epoch, eval_batch_size=eval_batch)

    seed_everything(cfg.seed)
    t_fit = time.perf_counter()
    predictor = method.fit(task, ctx)
    fit_seconds = time.perf_counter() - t_fit

    splits = stored_splits(cfg, method_cls, task)
    rows = np.flatnonzero(np.isin(task.split, splits))
    t_pred = time.perf_counter()
    scores, eval_rate = score_splits(predictor, task, splits, rows)
    predict_seconds = time.perf_counter() - t_pred
    base = bundle.table[["sample_id", "split", "y"]].iloc[rows].reset_index(drop=True)
    base["group"] = np.asarray(grouping.names, dtype=object)[grouping.ids[rows]]
    base["group_id"] = grouping.ids[rows]
    preds = P.build(base, scores)
    del scores
    metrics = score_predictions(preds, list(grouping.names))

    stats = dict(getattr(predictor, "stats", {}) or {})
    cost = {
        "wall_seconds": time.perf_counter() - t_start,  # this method only, not the reference ERM
        "cpu_seconds": time.process_time() - cpu_start,  # CPU time of every thread: the cost without other load
        "load_seconds": load_seconds,  # reading the data (decoding the images when the cache is cold)
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "predict_seconds_per_1000": predict_seconds / max(1, len(rows)) * 1000,
        "eval_samples_per_second": eval_rate,
        "eval_batch_size": float(eval_batch),
        "train_samples_per_second": float(stats.get("train_samples_per_second", float("nan"))),
        "peak_memory_mb": peak_memory_mb(dev),
        **{k: float(v) for k, v in stats.items() if k != "train_samples_per_second"},
    }

    diagnostics = expert_diagnostics_of(method_cls, predictor, task, preds, grouping.names)
    for line in warnings_text(diagnostics, method_cls.expert_candidate or ""):
        log(line)

    selection: dict[str, Any] = {}
    if cfg.selectors and cfg.method != "erm":
        erm_preds = erm_reference(cfg, device, log)
        preds, selection = compose(preds, erm_preds, list(cfg.selectors), metric=cfg.selection_metric,
                                   candidate=method_cls.expert_candidate)
        metrics = score_predictions(preds, list(grouping.names))

    metrics.update(diagnostics)
    notes = {
        "device": str(dev),
        "group_counts": grouping.counts.to_dict(orient="index"),
        "small_groups": list(grouping.small_groups),
        "dropped": bundle.dropped,
        "hparams": method.hp,
        "hparam_sources": sources,  # set / dataset / method, per hyperparameter
        "budget": budget,
        "num_classes": bundle.num_classes,
        "selection": selection,
    }
    return TrialResult(
        config=cfg, predictions=preds, metrics=metrics, group_names=grouping.names,
        candidates=tuple(P.candidates(preds)), cost=cost, notes=notes, state_dict=predictor.state_dict(),
    )


def expert_diagnostics_of(method_cls, predictor, task: TaskData, preds: pd.DataFrame,
                          group_names: tuple[str, ...]) -> dict[str, float]:
    """Failure signatures (`diag/...`) of a method's per-group experts on validation; {} without experts."""
    candidate = method_cls.expert_candidate
    if candidate is None:
        return {}
    val = preds[preds["split"] == "val"]
    if val.empty:
        return {}
    group_id = val["group_id"].to_numpy()
    sample = feature_rows(group_id, len(group_names))  # a bounded subset: no full extra pass on large sets
    features = predictor.features(task, task.indices("val")[sample])
    return expert_diagnostics(val["y"].to_numpy(), P.proba(val, candidate), group_id, list(group_names), candidate,
                              features, sample)


def erm_reference(cfg: TrialSpec, device: str, log: Callable[[str], None]) -> pd.DataFrame:
    """ERM predictions for the same dataset, attribute and seed: loaded from a run folder, or trained now.

    A trained-now ERM gets the method's budget (BUDGET_HPARAMS: epochs, batch size, backbone, ...) and
    keeps its own optimiser settings, so it is never a handicapped copy of the method's recipe (a sweep
    searches ERM's settings like any method's; pass --erm PATH to use such a run here).
    """
    if cfg.erm_predictions:
        folder = Path(cfg.erm_predictions)
        if not (folder / PREDICTIONS_ARTIFACT).is_file() or not (folder / CONFIG_ARTIFACT).is_file():
            raise ConfigError(f"--erm {str(folder)!r} is not a trial folder (needs predictions.parquet and config.json)")
        other = json.loads((folder / CONFIG_ARTIFACT).read_text())
        for field_name in ("dataset", "attribute", "seed", "dataset_options"):
            if other.get(field_name) != getattr(cfg, field_name):
                raise ConfigError(
                    f"--erm {str(folder)!r} is for {field_name}={other.get(field_name)!r}, this trial has "
                    f"{getattr(cfg, field_name)!r}; give an ERM run of the same dataset, attribute and seed"
                )
        if other.get("method") != "erm":
            raise ConfigError(f"--erm {str(folder)!r} is a {other.get('method')!r} run, not an erm run")
        return pd.read_parquet(folder / PREDICTIONS_ARTIFACT)
    shared = {k: v for k, v in cfg.set_hparams.items() if k in BUDGET_HPARAMS}
    log("training pooled ERM for the no-harm selection")
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("method", "hparams", "sources")}
    erm = TrialSpec.resolve(**{**settings, "method": "erm", "hparams": shared, "selectors": (),
                               "erm_predictions": None})
    return run_trial(erm, device=device).predictions


def save_trial(result: TrialResult, out: str | os.PathLike, force: bool = False, model: bool = True) -> Path:
    """Write predictions.parquet, metrics.json, config.json and (`model`) model.pt into `out`, all or nothing.

    Files are written into a staging folder beside `out` and moved into place
    at the end, so a crash never leaves a folder that looks complete.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output folder {str(out)!r} is not empty; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result.predictions.to_parquet(stage / PREDICTIONS_ARTIFACT, index=False)
        if model and result.state_dict:
            torch.save(result.state_dict, stage / MODEL_ARTIFACT)
        # `resolved_hparams` (= hparams) kept for readers of older folders' layout (stress re-scoring).
        config = {**result.config.to_dict(), "resolved_hparams": result.notes["hparams"],
                  "group_names": list(result.group_names), "candidates": list(result.candidates),
                  "command": sys.argv}
        (stage / CONFIG_ARTIFACT).write_text(json.dumps(config, indent=2, default=str) + "\n")
        (stage / "metrics.json").write_text(json.dumps(
            {"metrics": result.metrics, "cost": result.cost, "notes": result.notes}, indent=2, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out
