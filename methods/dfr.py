"""Deep feature reweighting (Kirichenko et al., 2023): retrain the last layer on group-balanced held-out data.

Stage 1 trains backbone and head with plain cross-entropy on the train split
(the shared loop; best epoch on validation). Stage 2 freezes everything and
fits a new last layer on the backbone's features of held-out validation rows.

Validation data consumed. A seeded split (seed of the trial) cuts the
validation rows into two halves:
  * the first half is DFR's training data: every repeat draws a group-balanced
    subset of it (each group, or group x label cell with `balance=group_label`,
    downsampled to the smallest one's size) and fits an L1-regularised logistic
    regression on standardised features; the repeats' weights are averaged;
  * the second half is never trained on: with `tune_C` on, it only picks the
    regularisation strength C from the paper's grid by worst-group accuracy.
The training loop's best-epoch choice (stage 1) also reads all of validation,
like every method's. Validation metrics of DFR are therefore optimistic on the
first half; test is never touched.

Candidates: `model` (the retrained last layer) and `base` (stage 1's own head).
"""

from __future__ import annotations

import numpy as np
import sklearn
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from datasets.base import DatasetError
from methods import register_method
from methods.base import FitContext, Predictor, TaskData
from methods.batches import Batch
from methods.hparams import Bool, Int, LogFloat
from methods.sampling import BALANCE_HPARAM, cell_ids
from methods.training import TRAINING_HPARAMS, TorchMethod, TorchPredictor, train

# The paper's grid of inverse L1 strengths.
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def split_validation(task: TaskData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(first half, second half) of the validation rows by a seeded permutation; the first is DFR's training data."""
    val = task.indices("val")
    perm = np.random.default_rng(seed).permutation(len(val))
    half = len(val) // 2
    return np.sort(val[perm[:half]]), np.sort(val[perm[half:]])


def balanced_subset(rows: np.ndarray, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows drawn without replacement so every present cell has as many as the smallest one."""
    present, counts = np.unique(cells, return_counts=True)
    m = int(counts.min())
    picks = [rng.choice(rows[cells == c], size=m, replace=False) for c in present]
    return np.sort(np.concatenate(picks))


def linear_to_logits(coef: np.ndarray, intercept: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's (coef_, intercept_) as a [C, D] weight and [C] bias whose argmax / softmax make the same decisions.

    Binary models have one row w: logits (-w/2, w/2) differ by w.x + b, so the
    softmax is the model's own sigmoid.
    """
    if coef.shape[0] == 1 and num_classes == 2:
        return np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


class DFRModel(nn.Module):
    """Backbone, stage-1 head, and the retrained last layer (used once `retrained` is set)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)
        self.last = nn.Linear(backbone.out_dim, num_classes)
        self.register_buffer("retrained", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@register_method("dfr")
class DFR(TorchMethod):
    description = ("Deep feature reweighting: ERM, then the last layer refit (L1 logistic regression) on group-balanced "
                   "draws from the first half of validation; the second half only tunes C")
    paper = ("Kirichenko, Izmailov & Wilson (2023), Last layer re-training is sufficient for robustness "
             "to spurious correlations (ICLR)")
    hparams = {
        **TRAINING_HPARAMS,
        "l1_C": LogFloat(1.0, low=0.01, high=1.0, search=False),  # used when tune_C is off
        "tune_C": Bool(True),  # pick C from the paper's grid on the second half of validation
        "repeats": Int(10, low=1, high=50, search=False),  # balanced draws averaged (the paper: 10)
        "balance": BALANCE_HPARAM,
    }
    candidates = ("model", "base")

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        if len(split_validation(task, ctx.seed)[0]) == 0:
            raise DatasetError("dfr retrains the last layer on validation rows, but the val split has fewer than two; "
                               "use a dataset split with a validation part")

    def build_model(self, task: TaskData) -> nn.Module:
        return DFRModel(self.build_backbone(task), task.num_classes)

    def infer(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        features = model.backbone(batch.x)
        base = model.head(features)
        # Before stage 2 both candidates are stage 1's head (so best-epoch selection sees it).
        return {"model": torch.where(model.retrained, model.last(features), base), "base": base}

    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        predictor = train(self, task, ctx)
        self.retrain_last_layer(predictor, task, ctx)
        return predictor

    def features(self, predictor: TorchPredictor, rows: np.ndarray) -> np.ndarray:
        """Frozen backbone features of `rows` (eval mode: BatchNorm statistics stay as trained)."""
        return predictor.map_rows(lambda model, batch: model.backbone(batch.x), rows, predictor.model.backbone.out_dim)

    def retrain_last_layer(self, predictor: TorchPredictor, task: TaskData, ctx: FitContext) -> None:
        """Stage 2: fit `last` on balanced draws from the first half of validation; only `last` changes."""
        fit_rows, tune_rows = split_validation(task, ctx.seed)
        cells = cell_ids(task.group[fit_rows], task.y[fit_rows], task.num_classes, self.hp["balance"])
        feats = self.features(predictor, fit_rows)
        scaler = StandardScaler().fit(feats)
        feats = scaler.transform(feats)
        grid = C_GRID if self.hp["tune_C"] and len(tune_rows) else (self.hp["l1_C"],)
        tune_x = scaler.transform(self.features(predictor, tune_rows)) if len(grid) > 1 else None
        self.retrain_rows: list[np.ndarray] = []  # the draws of the chosen C, kept for inspection
        best = None
        for C in grid:
            rng = np.random.default_rng(ctx.seed)
            coefs, intercepts, draws = [], [], []
            for _ in range(self.hp["repeats"]):
                rows = balanced_subset(fit_rows, cells, rng)
                idx = np.searchsorted(fit_rows, rows)  # fit_rows is sorted
                if len(np.unique(task.y[rows])) < 2:
                    continue  # a one-class draw has nothing to fit
                clf = l1_logistic_regression(C, ctx.seed)
                clf.fit(feats[idx], task.y[rows])
                coef, intercept = full_classes(clf, task.num_classes)
                coefs.append(coef)
                intercepts.append(intercept)
                draws.append(rows)
            if not coefs:
                raise DatasetError("dfr: every balanced draw from the first validation half has a single class; "
                                   "the validation split is too small for dfr, give it more rows")
            coef, intercept = np.mean(coefs, axis=0), np.mean(intercepts, axis=0)
            score = worst_group_accuracy(tune_x, task.y[tune_rows], task.group[tune_rows], coef, intercept) \
                if tune_x is not None else 0.0
            if best is None or score > best[0]:
                best = (score, C, coef, intercept, draws)
        _, self.chosen_C, coef, intercept, self.retrain_rows = best
        # Fold the standardisation into the layer: W (x - mu) / s + b = (W / s) x + (b - W mu / s).
        w = coef / scaler.scale_[None, :]
        b = intercept - w @ scaler.mean_
        model = predictor.model
        with torch.no_grad():
            model.last.weight.copy_(torch.as_tensor(w, dtype=model.last.weight.dtype))
            model.last.bias.copy_(torch.as_tensor(b, dtype=model.last.bias.dtype))
            model.retrained.fill_(True)
        predictor.stats = {**predictor.stats, "dfr_C": float(self.chosen_C), "dfr_rows": float(len(fit_rows))}


def sklearn_version() -> tuple[int, int]:
    major, minor = sklearn.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def l1_logistic_regression(C: float, seed: int) -> LogisticRegression:
    """An L1-penalised logistic regression (liblinear), spelled for the installed scikit-learn.

    scikit-learn 1.8 deprecated `penalty` in favour of `l1_ratio`; before 1.8
    `l1_ratio` alone is ignored (the penalty stays L2).
    """
    if sklearn_version() >= (1, 8):
        return LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed)
    return LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=seed)


def full_classes(clf: LogisticRegression, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted model as a [num_classes, D] weight and bias; classes absent from the draw get -inf-like bias."""
    coef, intercept = linear_to_logits(clf.coef_, clf.intercept_, len(clf.classes_))
    if len(clf.classes_) == num_classes:
        return coef, intercept
    # Some classes never appeared in the draw: they can never be predicted.
    w = np.zeros((num_classes, coef.shape[1]))
    b = np.full(num_classes, -1e4)
    w[clf.classes_], b[clf.classes_] = coef, intercept
    return w, b


def worst_group_accuracy(x: np.ndarray, y: np.ndarray, group: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> float:
    """Lowest per-group accuracy of the linear model (x @ coef.T + intercept, argmax) over the groups present."""
    pred = np.argmax(x @ coef.T + intercept, axis=1)
    return float(min((pred[group == g] == y[group == g]).mean() for g in np.unique(group)))
