"""Per-group metrics on predictions: vectorised numpy, no training, no torch.

Inputs everywhere: `y` int [N] labels in 0..C-1, `proba` float [N, C] class
probabilities (prediction = argmax), `groups` int [N] in 0..G-1, `group_names`
the G names. Binary means C == 2, positive class 1, score = proba[:, 1].

Flat metric keys are `m`, `m/group:<name>`, `m/worst`, `m/gap`: a colon, not
`=`, because MLflow rejects `=` in metric names.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

PER_GROUP_METRICS = ("acc", "bal_acc", "auc", "tpr", "fpr", "ece")
HIGHER_IS_BETTER: dict[str, bool] = {
    "acc": True, "bal_acc": True, "auc": True, "tpr": True, "fpr": False, "ece": False,
}
FAIRNESS_DIFFERENCES = ("dp_diff", "eopp_diff", "eodds_diff")


def _is_int(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_


def validate_inputs(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
    """Raise ValueError (one line: what is wrong, what was expected) on malformed predictions.

    Checks shapes (y and groups 1-D, proba 2-D [N, C] with C >= 2, equal lengths),
    integer labels in 0..C-1 and group ids in 0..n_groups-1, no NaN in proba, and
    proba rows summing to 1 within 1e-4.
    """
    y, proba, groups = np.asarray(y), np.asarray(proba), np.asarray(groups)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"proba must be 2-D [N, C] with C >= 2 classes, got shape {proba.shape}")
    if y.ndim != 1 or groups.ndim != 1:
        raise ValueError(f"y and groups must be 1-D [N], got shapes {y.shape} and {groups.shape}")
    if not (len(y) == len(proba) == len(groups)):
        raise ValueError(f"length mismatch: y has {len(y)} rows, proba {len(proba)}, groups {len(groups)}; expected equal")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if not _is_int(y):
        raise ValueError(f"y must hold integer class labels 0..{proba.shape[1] - 1}, got dtype {y.dtype}")
    if not _is_int(groups):
        raise ValueError(f"groups must hold integer group ids 0..{n_groups - 1}, got dtype {groups.dtype}")
    if not np.issubdtype(proba.dtype, np.number):
        raise ValueError(f"proba must be numeric probabilities, got dtype {proba.dtype}")
    if np.isnan(proba).any():
        raise ValueError(f"proba contains NaN in {int(np.isnan(proba).any(axis=1).sum())} rows; expected probabilities")
    if len(proba):
        worst = float(np.abs(proba.sum(axis=1) - 1).max())
        if not worst <= 1e-4:  # `not <=` also catches inf
            raise ValueError(f"proba rows must sum to 1 within 1e-4 (worst row off by {worst:.3g}); "
                             "pass probabilities (softmax), not logits")
    if len(y) and (y.min() < 0 or y.max() >= proba.shape[1]):
        raise ValueError(f"label outside 0..{proba.shape[1] - 1} (proba has {proba.shape[1]} classes), "
                         f"got labels in {y.min()}..{y.max()}")
    if len(groups) and (groups.min() < 0 or groups.max() >= n_groups):
        raise ValueError(f"group id outside 0..{n_groups - 1} ({n_groups} groups), got ids in {groups.min()}..{groups.max()}")


def accuracy_by_group(correct: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of a 0/1 (or boolean) array per group; NaN for an empty group.

    `correct` [N] gives [G]; `correct` [R, N] (R repeats sharing one `groups`,
    e.g. bootstrap or stress repeats) gives [R, G], with no Python loop over R.
    """
    correct = np.asarray(correct, dtype=np.float64)
    groups = np.asarray(groups)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if correct.ndim == 1:
            return np.bincount(groups, weights=correct, minlength=n_groups) / counts
        r = correct.shape[0]
        # Offset group ids per repeat so one bincount covers every repeat.
        flat = (groups[None, :] + n_groups * np.arange(r)[:, None]).ravel()
        sums = np.bincount(flat, weights=correct.ravel(), minlength=r * n_groups).reshape(r, n_groups)
        return sums / counts[None, :]


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic, ties counted 1/2 (average ranks).

    Positive class is `y == 1`, everything else negative. Returns NaN and warns
    when only one class is present (AUC is undefined there; sklearn raises).
    """
    y = np.asarray(y)
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"AUC undefined: only one class present among {len(y)} samples; reporting NaN", stacklevel=2)
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _multiclass_auc(y: np.ndarray, proba: np.ndarray) -> float:
    # One-vs-rest macro AUC, as sklearn's roc_auc_score(multi_class="ovr", average="macro").
    c = proba.shape[1]
    present = np.bincount(y, minlength=c) > 0
    if not present.all():
        warnings.warn(f"AUC undefined: classes {np.flatnonzero(~present).tolist()} absent among {len(y)} samples; "
                      "reporting NaN", stacklevel=4)
        return math.nan
    return float(np.mean([binary_auc((y == k).astype(np.int64), proba[:, k]) for k in range(c)]))


def _ece(y: np.ndarray, proba: np.ndarray, n_bins: int) -> float:
    # Guo et al. (2017): bins ((b-1)/M, b/M] of top-class confidence, weighted |acc - conf|.
    if len(y) == 0:
        return math.nan
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    # searchsorted(side="left") puts conf in (edge[b], edge[b+1]], the same edges as np.linspace,
    # so a value sitting exactly on an edge lands where an explicit `lo < conf <= hi` puts it.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    acc = np.bincount(b, weights=correct, minlength=n_bins)
    cf = np.bincount(b, weights=conf, minlength=n_bins)
    # sum_b |B_b|/n * |acc_b - conf_b| = sum_b |sum correct - sum conf| / n.
    return float(np.abs(acc - cf).sum() / len(y))


def _row(y: np.ndarray, proba: np.ndarray, n_bins: int) -> dict[str, float]:
    c = proba.shape[1]
    n = len(y)
    if n == 0:
        return {"n": 0, **{m: math.nan for m in PER_GROUP_METRICS}}
    pred = proba.argmax(axis=1)
    # Balanced accuracy: mean recall over the classes present in y (sklearn drops absent ones).
    support = np.bincount(y, minlength=c)
    hits = np.bincount(y, weights=(pred == y), minlength=c)
    present = support > 0
    out = {"n": n, "acc": float((pred == y).mean()), "bal_acc": float((hits[present] / support[present]).mean())}
    if c == 2:
        out["auc"] = binary_auc(y, proba[:, 1]) if present.all() else _one_class_auc(n)
        tp, fn = hits[1], support[1] - hits[1]
        fp, tn = support[0] - hits[0], hits[0]
        out["tpr"] = float(tp / (tp + fn)) if tp + fn else math.nan
        out["fpr"] = float(fp / (fp + tn)) if fp + tn else math.nan
    else:
        out["auc"] = _multiclass_auc(y, proba)
        out["tpr"] = out["fpr"] = math.nan
    out["ece"] = _ece(y, proba, n_bins)
    return out


def _one_class_auc(n: int) -> float:
    # Same warning as binary_auc, but attributed to the caller of group_table.
    warnings.warn(f"AUC undefined: only one class present among {n} samples; reporting NaN", stacklevel=4)
    return math.nan


def group_table(y, proba, groups, group_names: Sequence[str], n_bins: int = 15) -> pd.DataFrame:
    """Per-group metrics: rows 'overall' then each group name in order; columns n, acc, bal_acc, auc, tpr, fpr, ece.

    acc: accuracy of argmax. bal_acc: mean recall over the classes present in the row.
    auc: binary ROC AUC of proba[:, 1], or one-vs-rest macro AUC for C > 2; NaN with a
    warning when a class is absent from the row. tpr/fpr: binary only (NaN for C > 2 or
    a zero denominator). ece: expected calibration error of the top-class confidence
    with `n_bins` equal-width bins. An empty group has n = 0 and NaN metrics.
    """
    y, proba, groups = np.asarray(y), np.asarray(proba), np.asarray(groups)
    names = [str(name) for name in group_names]
    validate_inputs(y, proba, groups, len(names))
    if len(set(names)) != len(names) or "overall" in names:
        raise ValueError(f"group names must be unique and not 'overall', got {names}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    proba = proba.astype(np.float64, copy=False)
    rows = {"overall": _row(y, proba, n_bins)}
    # One stable sort, then contiguous slices per group: no boolean mask over N per group.
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(len(names) + 1))
    for g, name in enumerate(names):
        idx = order[bounds[g]:bounds[g + 1]]
        rows[name] = _row(y[idx], proba[idx], n_bins)
    return pd.DataFrame.from_dict(rows, orient="index")[["n", *PER_GROUP_METRICS]]


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Flatten a group_table into one dict of floats.

    For each metric m in PER_GROUP_METRICS: `m` (overall), `m/group:<name>` per group,
    `m/worst` (min over groups if higher is better, else max) and `m/gap` (max - min);
    worst and gap ignore NaN groups and are NaN when every group is NaN. Plus
    `n/group:<name>`.
    """
    out: dict[str, float] = {}
    groups = table.drop(index="overall")
    for m in PER_GROUP_METRICS:
        out[m] = float(table.loc["overall", m])
        values = groups[m].to_numpy(dtype=np.float64)
        for name, v in zip(groups.index, values):
            out[f"{m}/group:{name}"] = float(v)
        finite = values[~np.isnan(values)]
        if len(finite):
            out[f"{m}/worst"] = float(finite.min() if HIGHER_IS_BETTER[m] else finite.max())
            out[f"{m}/gap"] = float(finite.max() - finite.min())
        else:
            out[f"{m}/worst"] = out[f"{m}/gap"] = math.nan
    for name, n in zip(groups.index, groups["n"]):
        out[f"n/group:{name}"] = float(n)
    return out


def _spread(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.max() - finite.min()) if len(finite) else math.nan


def fairness_differences(y, proba, groups, n_groups: int) -> dict[str, float]:
    """Binary parity gaps between groups (all NaN for multiclass).

    dp_diff: max - min over groups of P(pred = 1 | group) (demographic parity difference).
    eopp_diff: max - min of TPR (equal opportunity difference).
    eodds_diff: max(TPR difference, FPR difference) (fairlearn's equalized odds difference).
    Empty groups are ignored; a group without positives is ignored for TPR, one
    without negatives for FPR.
    """
    y, proba, groups = np.asarray(y), np.asarray(proba), np.asarray(groups)
    validate_inputs(y, proba, groups, n_groups)
    if proba.shape[1] != 2:
        return {k: math.nan for k in FAIRNESS_DIFFERENCES}
    pred1 = proba.argmax(axis=1) == 1
    pos, neg = y == 1, y == 0
    # accuracy_by_group gives NaN for groups with no rows, which _spread then ignores.
    dp = _spread(accuracy_by_group(pred1, groups, n_groups))
    tpr_d = _spread(accuracy_by_group(pred1[pos], groups[pos], n_groups))
    fpr_d = _spread(accuracy_by_group(pred1[neg], groups[neg], n_groups))
    both = [d for d in (tpr_d, fpr_d) if not math.isnan(d)]
    return {"dp_diff": dp, "eopp_diff": tpr_d, "eodds_diff": max(both) if both else math.nan}


def evaluate(y, proba, groups, group_names: Sequence[str]) -> dict[str, float]:
    """summarize(group_table(...)) merged with fairness_differences(...): one flat dict of floats."""
    out = summarize(group_table(y, proba, groups, group_names))
    out.update(fairness_differences(y, proba, groups, len(group_names)))
    return out
