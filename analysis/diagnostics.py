"""Failure signatures of per-group experts, from validation predictions (and features where a model has them).

A method that trains to one class or collapses its features looks, in a table of
accuracies, like a method that merely lost: on a set with a 75 % base rate an
expert that always says "no" scores 0.75. These numbers say which it is:

- `bal_acc`: the expert's balanced accuracy on the group's validation rows
  (0.5 for a binary expert that predicts one class);
- `majority_share`: the share of the group's validation predictions that fall in
  its most predicted class (1.0: the expert predicts a single class);
- `between_class_cosine`: the mean cosine between the features of validation rows
  of *different* classes within the group (near 1: the group's features collapsed
  onto one direction, so no head can separate its classes).

Metric names: `diag/<candidate>/<name>/group:<group>` plus `diag/<candidate>/flagged_groups`.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score

PREFIX = "diag"
# A group is flagged when its expert predicts one class on >= this share of its validation rows ...
SINGLE_CLASS_SHARE = 0.999
# ... or when rows of different classes have features this aligned (healthy models measured 0.2-0.9,
# collapsed FairSDE 0.995-0.9999; docs/fairsde.md).
COLLAPSED_COSINE = 0.98


def majority_share(pred: np.ndarray) -> float:
    """Share of the predictions in the most predicted class (NaN for no rows)."""
    if len(pred) == 0:
        return math.nan
    return float(np.bincount(pred).max() / len(pred))


def between_class_cosine(features: np.ndarray, y: np.ndarray, max_rows: int = 2000) -> float:
    """Mean cosine similarity between rows of different classes (NaN with fewer than two classes).

    Uses at most `max_rows` rows (the first ones, deterministic) so a large validation set stays cheap.
    """
    features, y = np.asarray(features, dtype=np.float64)[:max_rows], np.asarray(y)[:max_rows]
    if len(np.unique(y)) < 2:
        return math.nan
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    z = features / np.where(norms > 0, norms, 1.0)
    sim = z @ z.T
    different = y[:, None] != y[None, :]
    return float(sim[different].mean())


def feature_rows(groups: np.ndarray, n_groups: int, per_group: int = 2000) -> np.ndarray:
    """Sorted positions of at most `per_group` rows of each group: the rows whose features the cosine reads."""
    groups = np.asarray(groups)
    parts = [np.flatnonzero(groups == g)[:per_group] for g in range(n_groups)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def expert_diagnostics(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, group_names: Sequence[str],
                       candidate: str, features: np.ndarray | None = None,
                       rows_of_features: np.ndarray | None = None) -> dict[str, float]:
    """Per-group failure signatures of one candidate on validation rows: flat `diag/...` metrics.

    `features` are the representation of the rows at positions `rows_of_features` (default: every row);
    `feature_rows` picks a bounded subset, so a large validation set needs no full extra pass.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    if features is not None and rows_of_features is None:
        rows_of_features = np.arange(len(y))
    feature_group = groups[rows_of_features] if features is not None else None
    pred = np.asarray(proba).argmax(axis=1)
    out: dict[str, float] = {}
    flagged = 0
    for g, name in enumerate(group_names):
        rows = groups == g
        if not rows.any():
            continue
        key = f"{PREFIX}/{candidate}/{{}}/group:{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class absent from the group's rows
            bal = float(balanced_accuracy_score(y[rows], pred[rows]))
        share = majority_share(pred[rows])
        out[key.format("bal_acc")] = bal
        out[key.format("majority_share")] = share
        two_classes = len(np.unique(y[rows])) > 1
        bad = two_classes and share >= SINGLE_CLASS_SHARE
        if features is not None:
            mine = feature_group == g
            cos = between_class_cosine(features[mine], y[rows_of_features][mine])
            out[key.format("between_class_cosine")] = cos
            bad = bad or (not math.isnan(cos) and cos >= COLLAPSED_COSINE)
        flagged += int(bad)
    out[f"{PREFIX}/{candidate}/flagged_groups"] = float(flagged)
    return out


def warnings_text(diag: dict[str, float], candidate: str) -> list[str]:
    """One line per flagged group: what the signature shows (for the trial's output)."""
    lines = []
    head = f"{PREFIX}/{candidate}/"
    for name, value in sorted(diag.items()):
        if not name.startswith(head) or "/group:" not in name:
            continue
        metric, _, group = name[len(head):].partition("/group:")
        if metric == "majority_share" and value >= SINGLE_CLASS_SHARE:
            bal = diag.get(f"{head}bal_acc/group:{group}", math.nan)
            if not math.isnan(bal) and bal < 1.0:  # 1.0: the group's rows hold that one class only
                lines.append(f"warning: {candidate} predicts a single class for group {group!r} on validation "
                             f"(balanced accuracy {bal:.3f}): it learnt nothing for this group")
        if metric == "between_class_cosine" and value >= COLLAPSED_COSINE:
            lines.append(f"warning: {candidate} features collapsed for group {group!r} on validation (mean cosine "
                         f"between classes {value:.4f}): its classes are not separable")
    return lines
