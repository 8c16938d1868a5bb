"""Deep feature reweighting (Kirichenko et al., 2023): retrain the last layer on group-balanced held-out data.

Stage 1 trains backbone and head with plain cross-entropy on the train split
(the shared loop; best epoch on validation). Stage 2 freezes everything and
fits a new last layer on the backbone's features of validation rows, as the
reference `dfr_evaluate_spurious.py` (DFR on validation, its defaults
`balance_dfr_val=True`, `notrain_dfr_val=True`) does:

  * tune C (with `tune_C` on): a seeded split cuts validation into two
    halves; one group-balanced draw from the first half (each DFR group
    downsampled to the smallest one's size) is standardised on its own
    statistics and fitted once per C of the paper's grid by an L1 logistic
    regression (liblinear); the C with the best worst-group accuracy on the
    second half wins (ties: the first in the grid's order);
  * refit: `repeats` (the reference's `num_retrains`, 20) group-balanced
    draws from the *whole* validation set, standardised with the statistics
    of the train split's features, each fitted with the chosen C; the
    layers' weights and biases are averaged.

DFR's groups are the cells being balanced: group x label by default (the
reference's Waterbirds/CelebA groups are label x spurious attribute), or the
group alone with `balance=group`. More than two classes: one-vs-rest L1
logistic regressions (what liblinear did for multiclass targets before
scikit-learn 1.8 refused them), whose scores become the logits.

Validation data consumed: the final layer is fitted on validation rows, so
DFR's validation metrics (and any selector or table that ranks by them) are
in-sample and optimistic; test is never touched.

Candidates: `model` (the retrained last layer) and `base` (stage 1's own head).
"""

from __future__ import annotations

import numpy as np
import sklearn
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from noharm.datasets.base import DatasetError
from noharm.methods import register_method
from noharm.methods.base import FitContext, Predictor, TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Bool, Choice, Int, LogFloat
from noharm.methods.linear_layer import full_classes, linear_to_logits, load_standardised
from noharm.methods.provenance import Provenance
from noharm.methods.sampling import BALANCE, cell_ids
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod, TorchPredictor, train

# The paper's grid of inverse L1 strengths.
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def split_validation(task: TaskData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(first half, second half) of the validation rows by a seeded permutation: C is fitted on the first, scored on the second."""
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
class DFR(Provenance, TorchMethod):
    description = ("Deep feature reweighting: ERM, then the last layer refit (L1 logistic regression, C tuned on "
                   "validation halves) on 20 group x label balanced draws of validation, averaged")
    paper = ("Kirichenko, Izmailov & Wilson (2023), Last layer re-training is sufficient for robustness "
             "to spurious correlations (ICLR)")
    reference = "PolinaKirichenko/deep_feature_reweighting dfr_evaluate_spurious.py (dfr_on_validation_tune / _eval)"
    departures = (
        "validation metrics are in-sample: the last layer is fitted on validation rows (the reference "
        "reports test only); tables that rank or select by validation overrate dfr",
        "stage 1 is this project's ERM (shared loop, best epoch on validation) rather than the reference's "
        "separately trained checkpoint; its features are the backbone's output before the head",
        "the class-weight grid of the reference is not searched: with balanced validation and no train rows "
        "(the reference's defaults) it uses equal class weights too",
        "more than two classes: one-vs-rest logistic regressions whose scores are softmaxed into probabilities "
        "(argmax decisions are the one-vs-rest ones)",
    )
    hparams = {
        **TRAINING_HPARAMS,
        "l1_C": LogFloat(1.0, low=0.01, high=1.0, search=False),  # used when tune_C is off
        "tune_C": Bool(True),  # pick C from the paper's grid on the validation halves
        "repeats": Int(20, low=1, high=50, search=False),  # balanced draws averaged (reference num_retrains=20)
        "balance": Choice("group_label", choices=BALANCE),  # DFR's groups: group x label
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

    def cells(self, task: TaskData, rows: np.ndarray) -> np.ndarray:
        """DFR's group of each row: what the draws balance and the worst-group accuracy ranges over."""
        return cell_ids(task.group[rows], task.y[rows], task.num_classes, self.hp["balance"])

    def choose_C(self, predictor: TorchPredictor, task: TaskData, ctx: FitContext) -> float:
        """The grid's C with the best worst-group accuracy on the second validation half (one balanced draw of the first)."""
        fit_rows, eval_rows = split_validation(task, ctx.seed)
        if not self.hp["tune_C"] or len(eval_rows) == 0:
            return self.hp["l1_C"]
        rows = balanced_subset(fit_rows, self.cells(task, fit_rows), np.random.default_rng(ctx.seed))
        if len(np.unique(task.y[rows])) < 2:
            return self.hp["l1_C"]  # nothing to tune on; the refit below says so if it fails too
        x_fit = self.features(predictor, rows)
        scaler = StandardScaler().fit(x_fit)  # the reference scales the tuning fits on their own rows
        x_fit = scaler.transform(x_fit)
        x_eval = scaler.transform(self.features(predictor, eval_rows))
        eval_cells = self.cells(task, eval_rows)
        scores = []
        for C in C_GRID:
            coef, intercept = fit_l1_logistic(x_fit, task.y[rows], C, ctx.seed, task.num_classes)
            scores.append(worst_group_accuracy(x_eval, task.y[eval_rows], eval_cells, coef, intercept))
        return C_GRID[int(np.argmax(scores))]

    def retrain_last_layer(self, predictor: TorchPredictor, task: TaskData, ctx: FitContext) -> None:
        """Stage 2: tune C, then fit `last` as the average of balanced refits on all of validation; only `last` changes."""
        self.chosen_C = self.choose_C(predictor, task, ctx)
        val = task.indices("val")
        val_x = self.features(predictor, val)
        # The reference standardises the refits with the train split's feature statistics.
        scaler = StandardScaler().fit(self.features(predictor, task.indices("train")))
        val_x = scaler.transform(val_x)
        cells = self.cells(task, val)
        rng = np.random.default_rng(ctx.seed)
        coefs, intercepts = [], []
        self.retrain_rows: list[np.ndarray] = []  # the draws, kept for inspection
        for _ in range(self.hp["repeats"]):
            rows = balanced_subset(val, cells, rng)
            if len(np.unique(task.y[rows])) < 2:
                continue  # a one-class draw has nothing to fit
            idx = np.searchsorted(val, rows)  # val is sorted
            coef, intercept = fit_l1_logistic(val_x[idx], task.y[rows], self.chosen_C, ctx.seed, task.num_classes)
            coefs.append(coef)
            intercepts.append(intercept)
            self.retrain_rows.append(rows)
        if not coefs:
            raise DatasetError("dfr: every balanced draw from the validation split has a single class; "
                               "the validation split is too small for dfr, give it more rows")
        coef, intercept = np.mean(coefs, axis=0), np.mean(intercepts, axis=0)
        load_standardised(predictor.model.last, coef, intercept, scaler)
        with torch.no_grad():
            predictor.model.retrained.fill_(True)
        predictor.stats = {**predictor.stats, "dfr_C": float(self.chosen_C), "dfr_rows": float(len(val))}


def sklearn_version() -> tuple[int, int]:
    major, minor = sklearn.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def l1_logistic_regression(C: float, seed: int) -> LogisticRegression:
    """An L1-penalised binary logistic regression (liblinear), spelled for the installed scikit-learn.

    scikit-learn 1.8 deprecated `penalty` in favour of `l1_ratio`; before 1.8
    `l1_ratio` alone is ignored (the penalty stays L2).
    """
    if sklearn_version() >= (1, 8):
        return LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed)
    return LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=seed)


def fit_l1_logistic(x: np.ndarray, y: np.ndarray, C: float, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit the L1 logistic regression and return it as a [num_classes, D] weight and [num_classes] bias.

    Two classes in `y`: one liblinear model. More: one-vs-rest liblinear
    models (liblinear's own multiclass scheme; scikit-learn >= 1.8 only runs it
    through OneVsRestClassifier).
    """
    classes = np.unique(y)
    if len(classes) > 2:
        clf = OneVsRestClassifier(l1_logistic_regression(C, seed)).fit(x, y)
        coef = np.concatenate([est.coef_ for est in clf.estimators_])
        intercept = np.concatenate([np.atleast_1d(est.intercept_) for est in clf.estimators_])
    else:
        clf = l1_logistic_regression(C, seed).fit(x, y)
        coef, intercept = linear_to_logits(clf.coef_, clf.intercept_, len(classes))
    return full_classes(coef, intercept, clf.classes_, num_classes)


def worst_group_accuracy(x: np.ndarray, y: np.ndarray, group: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> float:
    """Lowest per-group accuracy of the linear model (x @ coef.T + intercept, argmax) over the groups present."""
    pred = np.argmax(x @ coef.T + intercept, axis=1)
    return float(min((pred[group == g] == y[group == g]).mean() for g in np.unique(group)))
