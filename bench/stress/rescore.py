"""Re-scoring stored models for the stress tests: corrupted test images and group-blind routing.

A finished run folder holds `config.json`, `predictions.parquet` and
`model.pt`. `RunModel` rebuilds the run's task (dataset, attribute, seed) and
its predictor from the saved weights, without training. `PairRescorer` does
the two things the prediction-level scenarios cannot:

- routing: each validation and test sample's *predicted* group (FairSDE's
  discriminator, or a logistic-regression group classifier on the inputs),
  and the score of the predicted group's expert (the expert candidate
  re-scored with the predicted group in place of the true one);
- corruption: the method's and ERM's test scores on corrupted test images.

Re-scored arrays are cached under `<cache>/stress/` (the dataset cache folder,
`$NOHARM_CACHE_DIR` by default) keyed by a hash of both runs' weights and
configs and of the request, so a rerun reads them back instead of scoring.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from noharm.bench.errors import ConfigError

CACHE_VERSION = 1
ROUTERS = ("auto", "discriminator", "inputs")
ROUTER_PIXELS = 16  # images are average-pooled to at most this side for the input group classifier
VERIFY_ROWS = 64  # stored validation rows a restored model must reproduce
# Largest difference allowed: stored scores are float32; half-precision runs round far more.
VERIFY_ATOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 5e-3}


@dataclass
class RunFolder:
    """A finished trial's folder: its config, predictions and weights file."""

    path: Path
    config: dict[str, Any]
    predictions: pd.DataFrame

    @property
    def weights(self) -> Path:
        return self.path / "model.pt"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunFolder":
        """Read a folder written by `bench.trial.save_trial`; ConfigError when it is not one."""
        path = Path(path)
        missing = [n for n in ("config.json", "predictions.parquet") if not (path / n).is_file()]
        if missing:
            raise ConfigError(f"{str(path)!r} is not a trial folder (missing {', '.join(missing)}); "
                              "give a folder written by `noharm trial --out`")
        config = json.loads((path / "config.json").read_text())
        return cls(path=path, config=config, predictions=pd.read_parquet(path / "predictions.parquet"))

    def tags(self) -> dict[str, Any]:
        c = self.config
        return {"dataset": c.get("dataset"), "attribute": c.get("attribute"), "method": c.get("method"),
                "seed": c.get("seed")}


def build_task(config: dict[str, Any]):
    """(TaskData, sample ids [N]) of a run's dataset, attribute and seed, as `run_trial` builds them."""
    from noharm.datasets import Grouping, get_dataset
    from noharm.methods import TaskData

    dataset = get_dataset(config["dataset"], **(config.get("dataset_options") or {}))
    bundle = dataset.load(int(config.get("seed", 0)))
    grouping = Grouping.from_table(bundle.table, config["attribute"], bundle.attributes,
                                   int(config.get("min_group_size", 10)))
    task = TaskData(
        x=bundle.x, y=bundle.table["y"].to_numpy(np.int64), group=grouping.ids,
        split=bundle.table["split"].to_numpy(str), n_groups=grouping.n_groups, group_names=grouping.names,
        num_classes=bundle.num_classes, kind=bundle.kind, mean=bundle.mean, std=bundle.std, augment=None,
    )
    return task, bundle.table["sample_id"].to_numpy().astype(str)


class RunModel:
    """A run's predictor restored from `model.pt` (gradient-trained methods, including group models)."""

    def __init__(self, run: RunFolder, task, device: torch.device):
        from noharm.datasets import UnknownNameError
        from noharm.methods import FitContext, get_method
        from noharm.methods.hparams import HparamError

        if not run.weights.is_file():
            raise ConfigError(f"{str(run.path)!r} has no model.pt; re-scoring needs the run's saved weights")
        cfg = run.config
        try:
            self.method = get_method(cfg["method"])(cfg.get("resolved_hparams") or cfg.get("hparams") or {})
        except (HparamError, UnknownNameError) as err:
            raise ConfigError(f"cannot rebuild method {cfg['method']!r} of {str(run.path)!r}: {err}") from None
        self.ctx = FitContext(device=device, seed=int(cfg.get("seed", 0)), precision=cfg.get("precision", "fp32"))
        state = torch.load(run.weights, map_location=device, weights_only=True)
        self.name = cfg["method"]
        try:
            self._restore(task, state)
        except (RuntimeError, KeyError) as err:
            raise ConfigError(f"cannot restore method {self.name!r} from {str(run.weights)!r}: "
                              f"{str(err).splitlines()[0]}") from None

    def _restore(self, task, state: dict[str, torch.Tensor]) -> None:
        from noharm.methods.group_models import GroupModels, PriorModel
        from noharm.methods.training import TorchMethod

        if isinstance(self.method, GroupModels):
            self.models = []
            for g in range(task.n_groups):
                prefix = f"group{g}."
                sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                model = PriorModel(np.zeros(0, np.int64), task.num_classes) if set(sub) == {"log_prior"} \
                    else self.method.build_model(task)
                model.load_state_dict(sub, strict=True)
                self.models.append(model.to(self.ctx.device).eval())
        elif isinstance(self.method, TorchMethod):
            self.method.setup(task, self.ctx)
            self.model = self.method.build_model(task).to(self.ctx.device)
            self.model.load_state_dict(state, strict=True)
            self.model.eval()
        else:
            raise ConfigError(f"method {self.name!r} is not gradient-trained; re-scoring supports TorchMethod runs")

    def predictor(self, task):
        """A predictor scoring `task` (its own batch source, so any task with the same shapes works)."""
        from noharm.methods.batches import BatchSource
        from noharm.methods.fairsde import FairSDE, FairSDEPredictor
        from noharm.methods.group_models import GroupModelsPredictor
        from noharm.methods.training import TorchPredictor

        if hasattr(self, "models"):
            return GroupModelsPredictor(self.method, self.models, self.ctx, {})
        cls = FairSDEPredictor if isinstance(self.method, FairSDE) else TorchPredictor
        return cls(self.method, self.model, BatchSource(task, self.ctx.device), self.ctx)

    def scores(self, task, candidate: str) -> np.ndarray:
        """[N, C] probabilities of `candidate` on every row of `task`."""
        out = self.predictor(task).predict_proba(task, np.arange(len(task.y)))
        if candidate not in out:
            raise ConfigError(f"method {self.name!r} has no candidate {candidate!r}; it scores {', '.join(out)}")
        return out[candidate]

    def group_proba(self, task) -> np.ndarray | None:
        """[N, G] group probabilities of the method's own discriminator, or None when it has none."""
        pred = self.predictor(task)
        if not hasattr(pred, "predict_group_proba"):
            return None
        return pred.predict_group_proba(task, np.arange(len(task.y)))


def subtask(task, rows: np.ndarray, x: np.ndarray | None = None, group: np.ndarray | None = None):
    """The rows `rows` of `task` as their own task (all labelled test), optionally with new inputs or groups."""
    return replace(task, x=task.x[rows] if x is None else x, y=task.y[rows],
                   group=task.group[rows] if group is None else group.astype(np.int64),
                   split=np.full(len(rows), "test"))


def router_features(x: np.ndarray, kind: str) -> np.ndarray:
    """Inputs of the input group classifier: tabular rows as they are; images scaled to [0, 1], pooled, flattened."""
    if kind != "image":
        return np.asarray(x, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    side = max(t.shape[2], t.shape[3])
    if side > ROUTER_PIXELS:
        t = torch.nn.functional.adaptive_avg_pool2d(t, (min(ROUTER_PIXELS, t.shape[2]), min(ROUTER_PIXELS, t.shape[3])))
    return t.flatten(1).numpy()


class InputRouter:
    """Logistic regression from a sample's inputs to its group, fitted on the training rows."""

    def __init__(self, task, seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rows = task.indices("train")
        self.kind = task.kind
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
        self.model.fit(router_features(task.x[rows], task.kind), task.group[rows])
        self.classes = self.model.classes_

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(router_features(x, self.kind)), dtype=np.int64)


class PairRescorer:
    """Re-scores a method run and its ERM run: blind routing data, and corrupted test splits for the stress runner."""

    def __init__(self, method_run: RunFolder, erm_run: RunFolder, candidate: str, router: str = "auto",
                 device: str = "auto", cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 log: Callable[[str], None] = lambda msg: None):
        from noharm.bench.trial import resolve_device

        if router not in ROUTERS:
            raise ConfigError(f"unknown router {router!r}; choose one of: {', '.join(ROUTERS)}")
        self.method_run, self.erm_run = method_run, erm_run
        self.candidate, self.router_name, self.seed, self.log = candidate, router, int(seed), log
        self.device = resolve_device(device)
        if cache_dir is None:
            from noharm.datasets.image_cache import default_cache_dir

            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir) / "stress"
        self._task = self._ids = self._method = self._erm = self._router = None

    # -- lazily built pieces (a fully cached rerun builds none of them) --
    def task(self):
        if self._task is None:
            self._task, self._ids = build_task(self.method_run.config)
            names = tuple(self.method_run.config.get("group_names") or self._task.group_names)
            if tuple(self._task.group_names) != names:
                raise ConfigError(f"the rebuilt task has groups {self._task.group_names}, the run {names}: "
                                  "the dataset changed since the run")
        return self._task

    def rows(self, sample_ids: np.ndarray) -> np.ndarray:
        """Task rows of the given sample ids (ConfigError when some are unknown)."""
        self.task()
        index = pd.Index(self._ids)
        pos = index.get_indexer(np.asarray(sample_ids).astype(str))
        if (pos < 0).any():
            raise ConfigError(f"{int((pos < 0).sum())} predicted samples are not in the rebuilt dataset "
                              "(was it changed since the run?)")
        return pos

    def method_model(self) -> RunModel:
        if self._method is None:
            self._method = self._restored(self.method_run, self.candidate)
        return self._method

    def erm_model(self) -> RunModel:
        if self._erm is None:
            self._erm = self._restored(self.erm_run, "model")
        return self._erm

    def _restored(self, run: RunFolder, candidate: str) -> RunModel:
        """The run's model, checked to reproduce its stored validation scores.

        A method that keeps state outside model.pt (thresholds, a second stage)
        would re-score wrongly without error; comparing a few stored rows catches it.
        """
        from noharm.analysis import predictions as P

        model = RunModel(run, self.task(), self.device)
        preds = run.predictions
        rows = preds[preds["split"] == "val"].head(VERIFY_ROWS)
        if len(rows):
            scores = model.scores(subtask(self.task(), self.rows(rows["sample_id"].to_numpy())), candidate)
            worst = float(np.abs(scores - P.proba(rows, candidate)).max())
            if not worst <= VERIFY_ATOL.get(run.config.get("precision", "fp32"), 1e-4):
                raise ConfigError(f"the restored {run.config['method']!r} model does not reproduce the stored "
                                  f"{candidate!r} scores of {str(run.path)!r} (off by {worst:.3g}); the method keeps "
                                  "state outside model.pt, so it cannot be re-scored")
        return model

    def resolved_router(self) -> str:
        if self.router_name != "auto":
            return self.router_name
        from noharm.methods import get_method
        from noharm.methods.fairsde import FairSDE

        return "discriminator" if issubclass(get_method(self.method_run.config["method"]), FairSDE) else "inputs"

    def predicted_groups(self, sub) -> np.ndarray:
        """The router's group for every row of `sub`."""
        if self.resolved_router() == "discriminator":
            proba = self.method_model().group_proba(sub)
            if proba is None:
                raise ConfigError(f"method {self.method_run.config['method']!r} has no group discriminator; "
                                  "use router: inputs")
            return proba.argmax(axis=1).astype(np.int64)
        if self._router is None:
            self._router = InputRouter(self.task(), seed=self.seed)
        return self._router.predict(sub.x)

    # -- what the runner asks for --
    def routing(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted group [n], the predicted group's expert scores [n, C]) for clean inputs of these samples."""
        return self._cached({"what": "routing", "ids": _digest_ids(sample_ids)},
                            lambda: self._score(sample_ids, None, 0, routing_only=True), ("pred_group", "routed"))

    def corrupted(self, sample_ids: np.ndarray, corruption: str, severity: int):
        """(method expert scores, ERM scores, predicted group, routed scores) on corrupted inputs of these samples."""
        keys = ("expert", "erm", "pred_group", "routed")
        return self._cached({"what": "corruption", "corruption": corruption, "severity": int(severity),
                             "ids": _digest_ids(sample_ids)},
                            lambda: self._score(sample_ids, corruption, int(severity)), keys)

    def _score(self, sample_ids, corruption: str | None, severity: int, routing_only: bool = False) -> dict:
        from noharm.bench.stress.corruptions import corrupt

        task = self.task()
        rows = self.rows(sample_ids)
        x = task.x[rows]
        if corruption is not None:
            if task.kind != "image":
                raise ConfigError("image corruptions need an image dataset")
            x = corrupt(np.asarray(x), corruption, severity, seed=self.seed, device=self.device)
            self.log(f"re-scoring {len(rows)} test images under {corruption} severity {severity}")
        sub = subtask(task, rows, x=x)
        pred_group = self.predicted_groups(sub)
        routed = self.method_model().scores(subtask(task, rows, x=x, group=pred_group), self.candidate)
        out = {"pred_group": pred_group, "routed": routed}
        if not routing_only:
            out["expert"] = self.method_model().scores(sub, self.candidate)
            out["erm"] = self.erm_model().scores(sub, "model")
        return out

    def _cached(self, request: dict, compute: Callable[[], dict], keys: tuple[str, ...]):
        key = self._key(request)
        path = self.cache_dir / f"{key}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                return tuple(f[k] for k in keys)
        out = compute()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **{k: out[k] for k in keys})
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        return tuple(out[k] for k in keys)

    def _key(self, request: dict) -> str:
        h = hashlib.sha256()
        for run in (self.method_run, self.erm_run):
            h.update(json.dumps({k: run.config.get(k) for k in ("dataset", "attribute", "seed", "method",
                                                                "dataset_options", "resolved_hparams")},
                                sort_keys=True, default=str).encode())
            if run.weights.is_file():
                h.update(hashlib.sha256(run.weights.read_bytes()).digest())
        h.update(json.dumps({**request, "router": self.router_name, "candidate": self.candidate, "seed": self.seed,
                             "version": CACHE_VERSION}, sort_keys=True).encode())
        return h.hexdigest()[:32]


def _digest_ids(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(np.asarray(ids).astype(str)).encode()).hexdigest()[:16]
