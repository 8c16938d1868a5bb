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

from noharm.analysis.record import DIAG, GROUP_MARK

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


def signature_flags(bal_acc: float, share: float, cosine: float = math.nan) -> list[str]:
    """The failure signatures one group's numbers show: "single_class" (every prediction in one class while
    the group's rows are not all of it: balanced accuracy below 1) and "collapsed" (between-class cosine at
    or above COLLAPSED_COSINE). The one rule behind `flagged_groups` and the trial's warning lines."""
    flags = []
    if share >= SINGLE_CLASS_SHARE and not math.isnan(bal_acc) and bal_acc < 1.0:
        flags.append("single_class")
    if not math.isnan(cosine) and cosine >= COLLAPSED_COSINE:
        flags.append("collapsed")
    return flags


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
        key = f"{DIAG}/{candidate}/{{}}{GROUP_MARK}{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class absent from the group's rows
            bal = float(balanced_accuracy_score(y[rows], pred[rows]))
        share = majority_share(pred[rows])
        out[key.format("bal_acc")] = bal
        out[key.format("majority_share")] = share
        cos = math.nan
        if features is not None:
            mine = feature_group == g
            cos = between_class_cosine(features[mine], y[rows_of_features][mine])
            out[key.format("between_class_cosine")] = cos
        flagged += int(bool(signature_flags(bal, share, cos)))
    out[f"{DIAG}/{candidate}/flagged_groups"] = float(flagged)
    return out


def warnings_text(diag: dict[str, float], candidate: str) -> list[str]:
    """One line per failure signature of a flagged group (for the trial's output)."""
    lines = []
    head = f"{DIAG}/{candidate}/"
    groups = sorted(name[len(f"{head}bal_acc/group:"):] for name in diag if name.startswith(f"{head}bal_acc/group:"))
    for group in groups:
        value = {m: diag.get(f"{head}{m}/group:{group}", math.nan)
                 for m in ("bal_acc", "majority_share", "between_class_cosine")}
        flags = signature_flags(value["bal_acc"], value["majority_share"], value["between_class_cosine"])
        if "collapsed" in flags:
            lines.append(f"warning: {candidate} features collapsed for group {group!r} on validation (mean cosine "
                         f"between classes {value['between_class_cosine']:.4f}): its classes point one way")
        if "single_class" in flags:
            lines.append(f"warning: {candidate} predicts a single class for group {group!r} on validation "
                         f"(balanced accuracy {value['bal_acc']:.3f}): it learnt nothing for this group")
    return lines
