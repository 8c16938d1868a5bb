"""Post-hoc per-group decision thresholds chosen on validation (in the style of oxonfair).

Stage 1 trains a pooled model with cross-entropy (the shared loop). Stage 2
reads the model's logits on the *validation* rows only and chooses, per group,
the decision rule that maximises the validation objective:

  * binary labels: a threshold theta_g on the margin s = logit_1 - logit_0
    (predict 1 iff s > theta_g). Candidates are the midpoints between the
    group's sorted distinct validation margins plus one below and one above
    them all, so the search is exact over every decision the data can tell
    apart. `objective="acc"` maximises overall accuracy (sum of each group's
    correct predictions), `"bal_acc"` the mean over groups of each group's
    balanced accuracy. With `constraint="dp"` (positive rates) or `"eopp"`
    (true positive rates) the thresholds are chosen jointly so that all groups'
    rates lie within `tolerance` of each other: every rate band
    [lo, lo + tolerance], lo over all achievable rates, is tried, each group
    takes its best threshold inside the band, and the best band wins; this is
    the exact constrained optimum over the candidates.
  * more classes: per-group additive offsets b_g on the logits, chosen by
    exact coordinate ascent (each class offset in turn, over every value that
    changes a decision) on the same objectives; constraints need binary labels.

The chosen rule is exposed through probabilities: each group's logits are
shifted by b_g (for binary, b_g = (0, -theta_g)) so that the argmax realises
it. Candidates: `model` (thresholded) and `raw` (stage 1's unshifted model).
Test rows are never read before the rule is fixed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from noharm.datasets.base import DatasetError
from noharm.methods import register_method
from noharm.methods.base import FitContext, Predictor, TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Choice, Float, HparamError, Int
from noharm.methods.training import TRAINING_HPARAMS, Classifier, TorchMethod, TorchPredictor, train

OBJECTIVES = ("acc", "bal_acc")
CONSTRAINTS = ("none", "dp", "eopp")
# Above this many distinct margins a group's candidates are quantiles of its margins.
MAX_CANDIDATES = 2000
LOWS_PER_CHUNK = 256
SLACK = 1e-12  # rates are ratios of counts; the slack absorbs their rounding


def candidate_thresholds(scores: np.ndarray, max_candidates: int = MAX_CANDIDATES) -> np.ndarray:
    """Sorted thresholds that realise every split of `scores` into (<= t, > t): midpoints plus both ends."""
    u = np.unique(np.asarray(scores, np.float64))
    if len(u) == 0:
        return np.zeros(1)
    if len(u) > max_candidates:
        u = np.unique(np.quantile(u, np.linspace(0.0, 1.0, max_candidates)))
    return np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])


def threshold_table(scores: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per threshold (predict 1 iff score > t): correct count, balanced accuracy, positive rate and TPR."""
    scores, y = np.asarray(scores, np.float64), np.asarray(y)
    pos, neg = np.sort(scores[y == 1]), np.sort(scores[y != 1])
    n_pos, n_neg = len(pos), len(neg)
    tp = n_pos - np.searchsorted(pos, thresholds, side="right")
    fp = n_neg - np.searchsorted(neg, thresholds, side="right")
    tn = n_neg - fp
    tpr = tp / n_pos if n_pos else np.full(len(thresholds), np.nan)
    tnr = tn / n_neg if n_neg else np.full(len(thresholds), np.nan)
    bal = np.nanmean(np.vstack([tpr, tnr]), axis=0) if (n_pos or n_neg) else np.zeros(len(thresholds))
    return {"correct": (tp + tn).astype(np.float64), "bal_acc": bal,
            "dp": (tp + fp) / max(1, n_pos + n_neg), "eopp": tpr}


def choose_thresholds(scores: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int, objective: str = "acc",
                      constraint: str = "none", tolerance: float = 0.0) -> tuple[np.ndarray, float]:
    """Per-group thresholds on binary scores maximising the objective (subject to the rate constraint).

    Returns (thresholds [n_groups], objective value). Groups absent from the
    data get threshold 0 (the unshifted model's rule). The objective is overall
    accuracy ("acc") or the mean over present groups of balanced accuracy
    ("bal_acc"); the constraint bounds max - min over groups of the positive
    rate ("dp") or of the TPR ("eopp"; groups without positives are free).
    """
    if objective not in OBJECTIVES:
        raise HparamError(f"group-threshold objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if constraint not in CONSTRAINTS:
        raise HparamError(f"group-threshold constraint must be one of {list(CONSTRAINTS)}, got {constraint!r}")
    scores, y, group = np.asarray(scores, np.float64), np.asarray(y), np.asarray(group)
    present = [g for g in range(n_groups) if np.any(group == g)]
    thresholds = np.zeros(n_groups)
    cands, values, rates = {}, {}, {}
    for g in present:
        cands[g] = candidate_thresholds(scores[group == g])
        table = threshold_table(scores[group == g], y[group == g], cands[g])
        values[g] = table["correct"] / len(y) if objective == "acc" else table["bal_acc"] / len(present)
        rates[g] = table[constraint] if constraint != "none" else None
    if not present:
        return thresholds, 0.0
    if constraint == "none":
        for g in present:
            # Among equally good thresholds keep the one closest to the raw model's rule (0).
            ties = np.flatnonzero(values[g] >= values[g].max() - 1e-12)
            thresholds[g] = cands[g][ties[np.argmin(np.abs(cands[g][ties]))]]
        return thresholds, float(sum(values[g].max() for g in present))
    # A band [lo, lo + tolerance] holding every group's rate; lo runs over every achievable rate.
    finite = [r[np.isfinite(r)] for r in rates.values()]
    lows = np.unique(np.concatenate(finite)) if any(len(f) for f in finite) else np.zeros(1)
    best_total, best_picks = -np.inf, None
    for start in range(0, len(lows), LOWS_PER_CHUNK):  # chunks bound the [lows, candidates] masks' memory
        lo = lows[start:start + LOWS_PER_CHUNK, None]
        totals = np.zeros(len(lo))
        picks = {}
        for g in present:
            r = rates[g][None, :]
            inside = ~np.isfinite(r) | ((r >= lo - SLACK) & (r <= lo + tolerance + SLACK))
            masked = np.where(inside, values[g][None, :], -np.inf)
            picks[g] = np.argmax(masked, axis=1)
            totals += masked[np.arange(len(lo)), picks[g]]
        i = int(np.argmax(totals))  # rate 0 (every threshold above all scores) is always feasible
        if totals[i] > best_total:
            best_total, best_picks = float(totals[i]), {g: picks[g][i] for g in present}
    for g in present:
        thresholds[g] = cands[g][best_picks[g]]
    return thresholds, best_total


def multiclass_objective(pred: np.ndarray, y: np.ndarray, objective: str) -> float:
    """Correct count ("acc") or mean recall over the classes present ("bal_acc")."""
    if objective == "acc":
        return float((pred == y).sum())
    return float(np.mean([(pred[y == k] == k).mean() for k in np.unique(y)]))


def coordinate_offsets(logits: np.ndarray, y: np.ndarray, objective: str = "acc", rounds: int = 3) -> np.ndarray:
    """Additive class offsets b [C] (b_0 = 0) improving argmax(logits + b) on the objective, by exact coordinate ascent.

    For class c with the others fixed, a row is predicted c iff b_c > m_i with
    m_i = max_{k != c}(logits_ik + b_k) - logits_ic; every candidate value
    (midpoints of the sorted m) is scored at once from cumulative counts, and
    b_c moves only on a strict improvement, so the objective never decreases.
    """
    logits, y = np.asarray(logits, np.float64), np.asarray(y)
    n, C = logits.shape
    b = np.zeros(C)
    current = multiclass_objective(np.argmax(logits + b, axis=1), y, objective)
    class_counts = np.bincount(y, minlength=C).astype(np.float64)
    present = class_counts > 0
    for _ in range(rounds):
        moved = False
        for c in range(1, C):
            z = logits + b
            others = z.copy()
            others[:, c] = -np.inf
            other_arg = others.argmax(1)
            m = others.max(1) - logits[:, c]
            cands = candidate_thresholds(m)
            order = np.argsort(m, kind="stable")
            m_sorted = m[order]
            n_below = np.searchsorted(m_sorted, cands, side="left")  # rows with m < cand are predicted c
            # hits[i, k]: row i is right when predicted c (k = c) or when predicted its other argmax (k = other).
            is_c = (y == c).astype(np.float64)[order]
            other_right = np.zeros((n, C))
            other_right[np.arange(n), other_arg] = (y == other_arg).astype(np.float64)
            other_right = other_right[order]
            cum_c = np.concatenate([[0.0], np.cumsum(is_c)])[n_below]
            cum_other = np.vstack([np.zeros(C), np.cumsum(other_right, axis=0)])[n_below]  # [K, C]
            right_per_class = cum_c[:, None] * np.eye(C)[c][None, :] + (other_right.sum(0)[None, :] - cum_other)
            if objective == "acc":
                scores = right_per_class.sum(1)
            else:
                scores = (right_per_class[:, present] / class_counts[present]).mean(1)
            k = int(np.argmax(scores))
            if scores[k] > current + 1e-9:
                b[c], current, moved = cands[k], float(scores[k]), True
        if not moved:
            break
    return b


class ThresholdModel(nn.Module):
    """A classifier plus per-group logit offsets [G, C] (zero until stage 2 sets them)."""

    def __init__(self, classifier: Classifier, n_groups: int, num_classes: int):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("offsets", torch.zeros(n_groups, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


@register_method("group-threshold")
class GroupThreshold(TorchMethod):
    description = ("Post-hoc per-group decision thresholds (logit offsets) maximising a validation objective, optionally "
                   "under a DP/EqOpp rate constraint; chosen on validation only")
    paper = ("Delaney et al. (2024), OxonFair: a flexible toolkit for algorithmic fairness (NeurIPS); "
             "Hardt, Price & Srebro (2016), Equality of opportunity in supervised learning (NeurIPS)")
    hparams = {
        **TRAINING_HPARAMS,
        "objective": Choice("acc", choices=OBJECTIVES, search=False),
        "constraint": Choice("none", choices=CONSTRAINTS, search=False),
        "tolerance": Float(0.02, low=0.0, high=0.2, search=False),  # max - min of the constrained rate
        "rounds": Int(3, low=1, high=20, search=False),  # coordinate-ascent passes (more than two classes)
    }
    candidates = ("model", "raw")

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        if len(task.indices("val")) == 0:
            raise DatasetError("group-threshold chooses its thresholds on validation rows, but the val split is empty; "
                               "use a dataset split with a validation part")
        if self.hp["constraint"] != "none" and task.num_classes != 2:
            raise HparamError(f"group-threshold constraint {self.hp['constraint']!r} needs a binary label, this task has "
                              f"{task.num_classes} classes; use constraint=none (per-group logit offsets)")

    def build_model(self, task: TaskData) -> nn.Module:
        return ThresholdModel(Classifier(self.build_backbone(task), task.num_classes), task.n_groups, task.num_classes)

    def infer(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        raw = model(batch.x)
        return {"model": raw + model.offsets[batch.group].to(raw.dtype), "raw": raw}

    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        predictor = train(self, task, ctx)
        val = task.indices("val")
        logits = self.raw_logits(predictor, val)
        self.offsets = self.choose_offsets(logits, task.y[val], task.group[val], task.n_groups)
        with torch.no_grad():
            predictor.model.offsets.copy_(torch.as_tensor(self.offsets, dtype=torch.float32))
        return predictor

    def raw_logits(self, predictor: TorchPredictor, rows: np.ndarray) -> np.ndarray:
        """The unshifted model's logits of `rows` (exact, not recovered from clipped probabilities)."""
        return predictor.map_rows(lambda model, batch: model(batch.x), rows, 0).astype(np.float64)

    def choose_offsets(self, logits: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
        """Per-group logit offsets [G, C] realising the chosen rule (validation logits, labels and groups in)."""
        C = logits.shape[1]
        offsets = np.zeros((n_groups, C))
        if C == 2:
            self.thresholds, self.value = choose_thresholds(
                logits[:, 1] - logits[:, 0], y, group, n_groups,
                self.hp["objective"], self.hp["constraint"], self.hp["tolerance"])
            offsets[:, 1] = -self.thresholds
            return offsets
        for g in range(n_groups):
            rows = group == g
            if rows.any():
                offsets[g] = coordinate_offsets(logits[rows], y[rows], self.hp["objective"], self.hp["rounds"])
        return offsets
