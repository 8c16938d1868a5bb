"""Group models: a separate backbone and head per group, each trained on its own group alone.

The classic decoupled classifiers. Each group's model runs the shared training
loop on a sub-task that hides every other group's rows (their split is set to
"other", so the loop never draws them), and keeps its own best epoch, chosen on
its own group's validation rows. At prediction time each row is scored by its
group's model.

Groups with fewer than 2 training rows are refused. A group whose training
rows all share one label gets a constant model that predicts its (smoothed)
training label frequencies: nothing can be learnt about the label from such a
group, and training a network on one class only teaches it the same constant.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from noharm.datasets.base import DatasetError
from noharm.methods import register_method
from noharm.methods.base import FitContext, Predictor, TaskData
from noharm.methods.batches import BatchSource
from noharm.methods.hparams import Choice
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod, autocast, train

HIDDEN_SPLIT = "other"  # split label of the rows a group's model must not see


class PriorModel(nn.Module):
    """A constant classifier: logits are the log of Laplace-smoothed training label frequencies."""

    def __init__(self, y: np.ndarray, num_classes: int):
        super().__init__()
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        self.register_buffer("log_prior", torch.tensor(np.log((counts + 1) / (counts.sum() + num_classes)), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prior.expand(len(x), -1)


def group_subtask(task: TaskData, group: int) -> TaskData:
    """The task with every other group's rows moved to a split the training loop never reads (no copy of x)."""
    return replace(task, split=np.where(task.group == group, task.split, HIDDEN_SPLIT))


def group_objective(name: str, y: np.ndarray) -> Callable[[np.ndarray], float]:
    """Validation score of one group's rows (higher is better); AUC falls back to accuracy on one-class rows."""
    if name == "auc" and len(np.unique(y)) < 2:
        name = "acc"  # AUC is undefined there; accuracy still ranks epochs

    def score(proba: np.ndarray) -> float:
        pred = proba.argmax(axis=1)
        if name == "acc":
            return float(accuracy_score(y, pred))
        if name == "bal_acc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # classes absent from y
                return float(balanced_accuracy_score(y, pred))
        if proba.shape[1] == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(proba.shape[1])))

    return score


@register_method("group-models")
class GroupModels(TorchMethod):
    description = "One backbone and head per group, each trained on its own group alone, routed by the true group"
    paper = "Dwork et al. (2018), Decoupled classifiers for group-fair and efficient machine learning (FAT*)"
    hparams = {
        **TRAINING_HPARAMS,
        # Each group's best epoch is chosen on its own validation rows by this metric.
        "expert_objective": Choice("acc", choices=("acc", "bal_acc", "auc"), search=False),
    }
    candidates = ("experts",)
    expert_candidate = "experts"

    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        train_idx = task.indices("train")
        counts = np.bincount(task.group[train_idx], minlength=task.n_groups)
        for g in range(task.n_groups):
            if counts[g] < 2:
                raise DatasetError(
                    f"group-models: group {task.group_names[g]!r} has {counts[g]} training row(s); each group trains "
                    "its own model and needs at least 2; use a coarser attribute or a larger min_group_size"
                )
        models: list[nn.Module] = []
        stats: dict[str, float] = {"train_samples": 0.0, "train_seconds": 0.0, "epochs_run": 0.0}
        for g, name in enumerate(task.group_names):
            labels = task.y[train_idx[task.group[train_idx] == g]]
            if len(np.unique(labels)) < 2:
                ctx.log(f"group {name!r}: one training class only, using its label frequencies")
                models.append(PriorModel(labels, task.num_classes).to(ctx.device))
                stats[f"best_epoch/group:{name}"] = 0.0
                continue
            sub = group_subtask(task, g)
            sub_ctx = self._group_context(ctx, sub, name)
            ctx.log(f"group {name!r}: training on {counts[g]} rows")
            predictor = train(self, sub, sub_ctx)
            models.append(predictor.model)  # keep the weights, drop the sub-task's batch source
            for key in ("train_samples", "train_seconds"):
                stats[key] += predictor.stats[key]
            stats["epochs_run"] = max(stats["epochs_run"], predictor.stats["epochs_run"])
            stats[f"best_epoch/group:{name}"] = float(predictor.stats["best_epoch"])
        secs = stats["train_seconds"]
        stats["train_samples_per_second"] = stats["train_samples"] / secs if secs > 0 else math.nan
        return GroupModelsPredictor(self, models, ctx, stats)

    def _group_context(self, ctx: FitContext, sub: TaskData, name: str) -> FitContext:
        """The trial's context with this group's own validation objective and group-tagged logs."""
        val_idx = sub.indices("val")
        objective = group_objective(self.hp["expert_objective"], sub.y[val_idx]) if len(val_idx) else None
        on_epoch = ctx.on_epoch
        tagged = None
        if on_epoch is not None:
            def tagged(epoch: int, logs: dict[str, float]) -> None:
                on_epoch(epoch, {f"{k}/group:{name}": v for k, v in logs.items()})
        log = ctx.log
        return replace(ctx, objective=objective, on_epoch=tagged, log=lambda msg: log(f"[{name}] {msg}"))


class GroupModelsPredictor(Predictor):
    """Scores each row with its own group's model."""

    candidates = ("experts",)

    def __init__(self, method: GroupModels, models: list[nn.Module], ctx: FitContext, stats: dict[str, float]):
        self.method = method
        self.models = models
        self.ctx = ctx
        self.stats = stats
        self._source: BatchSource | None = None

    def _batches(self, task: TaskData) -> BatchSource:
        if self._source is None or self._source.task is not task:
            self._source = BatchSource(task, self.ctx.device)
        return self._source

    @torch.inference_mode()
    def predict_proba(self, task: TaskData, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices)
        if task.n_groups != len(self.models):
            raise ValueError(f"task has {task.n_groups} groups but {len(self.models)} group models were trained")
        out = np.zeros((len(indices), task.num_classes), np.float32)
        source = self._batches(task)
        groups = task.group[indices]
        for g, model in enumerate(self.models):
            pos = np.flatnonzero(groups == g)
            model.eval()
            done = 0
            for batch in source.iterate(indices[pos], self.ctx.eval_batch_size):
                with autocast(self.ctx):
                    logits = self.method.infer(model, batch)["experts"]
                n = len(batch.index)
                out[pos[done:done + n]] = torch.softmax(logits.float(), dim=1).cpu().numpy()
                done += n
        return {"experts": out}

    def state_dict(self) -> dict[str, Any]:
        return {f"group{g}.{k}": v.detach().cpu() for g, m in enumerate(self.models) for k, v in m.state_dict().items()}
