"""The Method interface: hyperparameters declared once, `fit` returns a predictor of candidates."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from noharm.methods.hparams import Param, resolve


@dataclass
class TaskData:
    """What a method trains on: inputs, labels and group ids of every row, with split labels.

    Methods train on `train`, may use `val` (early stopping, thresholds, DFR's
    held-out part) and never look at `test`.
    """

    x: np.ndarray  # float32 [N, D] or uint8 [N, C, H, W]
    y: np.ndarray  # int64 [N]
    group: np.ndarray  # int64 [N], 0..n_groups-1
    split: np.ndarray  # str [N]: train / val / test
    n_groups: int
    group_names: tuple[str, ...]
    num_classes: int
    kind: str  # "tabular" | "image"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    augment: str | None = None

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass
class FitContext:
    """Run-time settings a method gets from the trial (not hyperparameters)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    # Validation objective for early stopping: proba of the val rows -> score, higher is better.
    objective: Callable[[np.ndarray], float] | None = None
    precision: str = "fp32"  # fp32, bf16 (autocast, CPU or GPU) or fp16 (GPU, with a gradient scaler)
    # Channels-last memory format for image models: "auto" (on for CUDA and for bf16), "on", "off".
    channels_last: str = "auto"
    # perf_counter() when the trial started, to measure the time to the first training step.
    started_at: float | None = None
    log: Callable[[str], None] = lambda msg: None
    # Called after each epoch with (epoch, {"train/loss": ..., "val/objective": ...}).
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    # Rows per inference batch; None sizes it to the input, the memory at hand and the training batch
    # (`methods.batches.eval_batch_size`).
    eval_batch_size: int | None = None


class Predictor(ABC):
    """A fitted model: scores any rows of the task as class probabilities per candidate."""

    candidates: tuple[str, ...] = ("model",)

    @abstractmethod
    def predict_proba(self, task: TaskData, indices: np.ndarray) -> dict[str, np.ndarray]:
        """{candidate: float [len(indices), C] probabilities}."""

    def state_dict(self) -> dict[str, Any]:
        """Weights to save as the run's artifact (empty when there is nothing to save)."""
        return {}

    def features(self, task: TaskData, indices: np.ndarray) -> np.ndarray | None:
        """float [len(indices), D]: the shared representation of the rows, for diagnostics; None without one."""
        return None

    # Filled in by the training loop: epochs run, best epoch, samples seen.
    stats: dict[str, float] = {}


class Method(ABC):
    """A registered training method. Subclasses declare `hparams` and implement `fit`."""

    name: ClassVar[str] = ""  # set by the registry
    description: ClassVar[str] = ""  # one line
    paper: ClassVar[str] = ""
    hparams: ClassVar[dict[str, Param]] = {}
    # Candidates this method's predictor exposes; the first is the primary one.
    candidates: ClassVar[tuple[str, ...]] = ("model",)
    # Candidates routed by the true group (one model per group), which the selector composes with ERM.
    expert_candidate: ClassVar[str | None] = None
    # Whether something after the trial reads this method's training-split predictions. The trial
    # scores and stores only validation and test unless this is True (or the trial asks for train
    # rows); no built-in method needs them: DFR and group-threshold fit on validation, selection and
    # stress read validation and test.
    needs_train_predictions: ClassVar[bool] = False

    def __init__(self, overrides: Mapping[str, Any] | None = None):
        self.hp = resolve(self.hparams, overrides, owner=self.name)

    @abstractmethod
    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        """Train on task's train rows (val as the method needs) and return a predictor."""

    @classmethod
    def summary(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "description": cls.description,
            "paper": cls.paper,
            "candidates": list(cls.candidates),
            "hparams": {k: p.describe() for k, p in cls.hparams.items()},
        }
