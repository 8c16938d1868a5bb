"""The shared training loop for gradient-trained methods.

A `TorchMethod` subclass says what its model is (`build_model`), what its loss
is (`training_loss`) and how it scores (`infer`); this module runs epochs,
the optimiser and schedule, validation-only model selection (best epoch) and
batched inference.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods.backbones import BACKBONES, build_backbone
from noharm.methods.base import FitContext, Method, Predictor, TaskData
from noharm.methods.batches import Batch, BatchSource, eval_batch_size
from noharm.methods.hparams import Choice, Float, Int, LogFloat, Param, Text

# Declared once; methods extend this dict (`{**TRAINING_HPARAMS, ...}`).
TRAINING_HPARAMS: dict[str, Param] = {
    "optimizer": Choice("adam", choices=("adam", "sgd"), search=False),
    "lr": LogFloat(1e-3, low=1e-4, high=1e-1, gt=0.0),
    "weight_decay": LogFloat(1e-4, low=1e-6, high=1e-2, ge=0.0),
    "momentum": Float(0.9, low=0.0, high=0.99, search=False, ge=0.0, lt=1.0),
    "batch_size": Int(128, low=16, high=1024, search=False, ge=1),
    "epochs": Int(10, low=1, high=300, search=False, ge=1),
    "schedule": Choice("cosine", choices=("cosine", "exp", "none"), search=False),
    "lr_decay": Float(0.9, low=0.5, high=1.0, search=False, gt=0.0, le=1.0),  # per-epoch factor for schedule=exp
    "patience": Int(0, low=0, high=100, search=False, ge=0),  # 0: run every epoch, still keep the best
    "backbone": Choice("auto", choices=BACKBONES, search=False),
    "hidden": Int(256, low=32, high=2048, search=False, ge=1),  # MLP width
    "pretrained": Text(""),  # local weights file for resnet18; never downloads
}


class Classifier(nn.Module):
    """Backbone features followed by one linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TorchMethod(Method):
    """A method trained by gradient descent through the shared loop."""

    hparams = TRAINING_HPARAMS

    def build_backbone(self, task: TaskData) -> nn.Module:
        return build_backbone(self.hp["backbone"], task.input_shape, task.kind, hidden=self.hp["hidden"],
                              pretrained=self.hp.get("pretrained", ""))

    def build_model(self, task: TaskData) -> nn.Module:
        return Classifier(self.build_backbone(task), task.num_classes)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch.x), batch.y)

    def infer(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Logits per candidate."""
        return {self.candidates[0]: model(batch.x)}

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = self.parameter_groups(model)
        hp = self.hp
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        return torch.optim.AdamW(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])

    def train_step(self, model: nn.Module, batch: Batch, opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, ctx: FitContext) -> torch.Tensor:
        """One optimisation step; returns the (detached) loss. Override for multi-player updates."""
        with autocast(ctx):
            loss = self.training_loss(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: training loss became {loss.item()}; lower lr")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Hook for methods with per-epoch state (e.g. group weights)."""

    def train_indices(self, task: TaskData, epoch: int, generator: torch.Generator) -> np.ndarray:
        """The train rows of one epoch, in batch order: a random permutation unless a method samples otherwise.

        An override (e.g. group-balanced resampling) should return as many rows
        as the train split has, so the learning-rate schedule's step count holds.
        """
        idx = task.indices("train")
        return idx[torch.randperm(len(idx), generator=generator).numpy()]

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        """Hook run before training (e.g. compute group sizes)."""

    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        return train(self, task, ctx)


class TorchPredictor(Predictor):
    def __init__(self, method: TorchMethod, model: nn.Module, source: BatchSource, ctx: FitContext):
        self.method = method
        self.model = model
        self.source = source
        self.ctx = ctx
        self.candidates = tuple(method.candidates)
        self.stats: dict[str, float] = {}
        # Scores already computed for these exact weights (the best epoch's validation pass), reused
        # instead of scoring the same rows again: (task, rows, weights fingerprint, scores).
        self.memo: tuple[TaskData, np.ndarray, tuple, dict[str, np.ndarray]] | None = None

    @property
    def eval_batch(self) -> int:
        """Rows per inference batch: the context's, else sized to the input, memory and training batch."""
        return self.ctx.eval_batch_size or eval_batch_size(
            self.source.task.input_shape, self.ctx.device, self.method.hp.get("batch_size"))

    def fingerprint(self) -> tuple:
        """Identity and in-place version of every weight and buffer: any change to the model changes it.

        Optimiser steps, `load_state_dict` and post-hoc edits (DFR's last layer, group
        thresholds) all write in place, which bumps a tensor's version counter.
        """
        return tuple((id(t), t._version) for t in self.model.state_dict(keep_vars=True).values())

    def remember(self, task: TaskData, indices: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        """Keep `scores` of `indices` as the scores of the model's current weights."""
        self.memo = (task, np.array(indices), self.fingerprint(), scores)

    def _recall(self, task: TaskData, indices: np.ndarray) -> dict[str, np.ndarray] | None:
        if self.memo is None:
            return None
        m_task, m_idx, m_fp, m_scores = self.memo
        if m_task is task and np.array_equal(m_idx, indices) and m_fp == self.fingerprint():
            return {c: v.copy() for c, v in m_scores.items()}
        return None

    @torch.inference_mode()
    def predict_proba(self, task: TaskData, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices)
        known = self._recall(task, indices)
        if known is not None:
            return known
        self.model.eval()
        if task is not self.source.task:
            # Another task (e.g. corrupted test images for a stress test): score its inputs, not the training ones.
            self.source = BatchSource(task, self.ctx.device, channels_last=self.source.channels_last)
        c_dim = task.num_classes
        out = {c: np.empty((len(indices), c_dim), np.float32) for c in self.candidates}
        done = 0
        for batch in self.source.iterate(indices, self.eval_batch):
            with autocast(self.ctx):
                logits = self.method.infer(self.model, batch)
            n = len(batch.index)
            for c in self.candidates:
                out[c][done:done + n] = torch.softmax(logits[c].float(), dim=1).cpu().numpy()
            done += n
        return out

    @torch.inference_mode()
    def map_rows(self, fn: Callable[[nn.Module, Batch], torch.Tensor], rows: np.ndarray, width: int) -> np.ndarray:
        """float32 [len(rows), width]: `fn(model, batch)` over `rows` in eval mode, batched, concatenated."""
        self.model.eval()
        parts = []
        for batch in self.source.iterate(np.asarray(rows), self.eval_batch):
            with autocast(self.ctx):
                parts.append(fn(self.model, batch).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def features(self, task: TaskData, indices: np.ndarray) -> np.ndarray | None:
        backbone = getattr(self.model, "backbone", None)
        if backbone is None or task is not self.source.task:
            return None
        return self.map_rows(lambda model, batch: model.backbone(batch.x), indices, backbone.out_dim)


def autocast(ctx: FitContext):
    """bf16/fp16 autocast when asked for; metrics and selection stay fp32."""
    if ctx.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if ctx.precision == "bf16" else torch.float16
    return torch.autocast(device_type=ctx.device.type, dtype=dtype)


def use_channels_last(task: TaskData, ctx: FitContext) -> bool:
    """Channels-last helps convolutions on CUDA and with bf16 on CPU; fp32 CPU convolutions gain nothing.

    Measured on this project's CPU machine in bench/perf/train_speed.py (see RESULTS.md).
    """
    if task.kind != "image" or ctx.channels_last == "off":
        return False
    if ctx.channels_last == "on":
        return True
    return ctx.device.type == "cuda" or ctx.precision == "bf16"


def make_scheduler(method: TorchMethod, opt: torch.optim.Optimizer, steps_per_epoch: int):
    hp = method.hp
    if hp["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, hp["epochs"] * steps_per_epoch))
    if hp["schedule"] == "exp":
        # Per-epoch decay expressed per step so every schedule steps once per batch.
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp["lr_decay"] ** (1.0 / max(1, steps_per_epoch)))
    return None


def train(method: TorchMethod, task: TaskData, ctx: FitContext) -> TorchPredictor:
    """Run the epochs; keep the weights of the best validation epoch (validation only, never test)."""
    hp = method.hp
    torch.manual_seed(ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed)
    channels_last = use_channels_last(task, ctx)
    source = BatchSource(task, ctx.device, channels_last=channels_last)
    method.setup(task, ctx)
    model = method.build_model(task).to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = method.make_optimizer(model)
    train_idx, val_idx = task.indices("train"), task.indices("val")
    if len(train_idx) == 0:
        raise ValueError("the train split is empty")
    bs = hp["batch_size"]
    # Drop a last batch of one sample: BatchNorm cannot train on it.
    drop_last = len(train_idx) % bs == 1
    steps = max(1, len(train_idx) // bs if drop_last else -(-len(train_idx) // bs))
    sched = make_scheduler(method, opt, steps)
    scaler = torch.amp.GradScaler(enabled=ctx.precision == "fp16")
    predictor = TorchPredictor(method, model, source, ctx)

    first_step_seconds = float("nan")
    best_score, best_epoch, best_state, best_val, stale = -np.inf, -1, None, None, 0
    samples, train_seconds = 0, 0.0
    for epoch in range(hp["epochs"]):
        model.train()
        method.on_epoch_start(model, epoch)
        t0 = time.perf_counter()
        total, n_batches = 0.0, 0
        order = method.train_indices(task, epoch, gen)
        for batch in source.iterate(order, bs, generator=gen, augment=task.augment, drop_last=drop_last):
            loss = method.train_step(model, batch, opt, scaler, ctx)
            if n_batches == 0 and epoch == 0 and ctx.started_at is not None:
                first_step_seconds = time.perf_counter() - ctx.started_at
            if sched is not None:
                sched.step()
            total += float(loss)
            n_batches += 1
            samples += len(batch.index)
        train_seconds += time.perf_counter() - t0
        logs = {"train/loss": total / max(1, n_batches)}
        if ctx.objective is not None and len(val_idx):
            val_scores = predictor.predict_proba(task, val_idx)
            score = float(ctx.objective(val_scores[method.candidates[0]]))
            logs["val/objective"] = score
            if score > best_score or best_state is None:
                best_score, best_epoch, stale, best_val = score, epoch, 0, val_scores
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        ctx.log(f"epoch {epoch + 1}/{hp['epochs']} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
        if ctx.on_epoch is not None:
            ctx.on_epoch(epoch, logs)
        if hp["patience"] and stale >= hp["patience"]:
            break
    if best_state is not None:
        if best_epoch != epoch:  # the last epoch's weights are the best ones already
            model.load_state_dict(best_state)
        del best_state
        # The validation scores of these very weights: the trial reuses them instead of a second pass.
        predictor.remember(task, val_idx, best_val)
    predictor.stats = {
        "epochs_run": epoch + 1,
        "best_epoch": best_epoch + 1 if best_epoch >= 0 else epoch + 1,
        "train_samples": samples,
        "train_seconds": train_seconds,
        "train_samples_per_second": samples / train_seconds if train_seconds > 0 else float("nan"),
        "time_to_first_step_seconds": first_step_seconds,
        "channels_last": float(channels_last),
    }
    return predictor
