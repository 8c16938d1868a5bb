"""Per-group metrics on predictions: vectorised numpy, no training, no torch.

Inputs everywhere: `y` int [N] labels in 0..C-1, `proba` float [N, C] class
probabilities (prediction = argmax), `groups` int [N] in 0..G-1, `group_names`
the G names. Binary means C == 2, positive class 1, score = proba[:, 1].
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

PER_GROUP_METRICS = ("acc", "bal_acc", "auc", "tpr", "fpr", "ece")
HIGHER_IS_BETTER = {"acc": True, "bal_acc": True, "auc": True, "tpr": True, "fpr": False, "ece": False}


def validate_inputs(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
    """Raise ValueError (one line: what is wrong, what was expected) on malformed predictions."""
    y, proba, groups = np.asarray(y), np.asarray(proba), np.asarray(groups)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"proba must be 2-D [N, C] with C >= 2, got shape {proba.shape}")
    if not (len(y) == len(proba) == len(groups)):
        raise ValueError(f"length mismatch: y has {len(y)}, proba {len(proba)}, groups {len(groups)} rows")
    if np.isnan(proba).any():
        raise ValueError("proba contains NaN")
    if len(proba) and np.abs(proba.sum(axis=1) - 1).max() > 1e-4:
        raise ValueError("proba rows must sum to 1 (within 1e-4); pass probabilities, not logits")
    if len(y) and (y.min() < 0 or y.max() >= proba.shape[1]):
        raise ValueError(f"labels must be in 0..{proba.shape[1] - 1}, got range {y.min()}..{y.max()}")
    if len(groups) and (groups.min() < 0 or groups.max() >= n_groups):
        raise ValueError(f"group ids must be in 0..{n_groups - 1}, got range {groups.min()}..{groups.max()}")


def accuracy_by_group(correct: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of a 0/1 array per group ([N] -> [G], or [R, N] -> [R, G]); NaN for an empty group."""
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
    """ROC AUC by the Mann-Whitney statistic (ties averaged); NaN with a warning if one class is absent."""
    y = np.asarray(y)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"AUC undefined: only one class present among {len(y)} samples; reporting NaN", stacklevel=2)
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _multiclass_auc(y: np.ndarray, proba: np.ndarray) -> float:
    c = proba.shape[1]
    present = np.bincount(y, minlength=c) > 0
    if not present.all():
        warnings.warn(f"AUC undefined: classes {np.flatnonzero(~present).tolist()} absent; reporting NaN", stacklevel=3)
        return math.nan
    return float(np.mean([binary_auc((y == k).astype(int), proba[:, k]) for k in range(c)]))


def _ece(y: np.ndarray, proba: np.ndarray, n_bins: int) -> float:
    if len(y) == 0:
        return math.nan
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    # Bins (lo, hi]; confidence 0 cannot occur for C >= 2 probabilities.
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    acc = np.bincount(b, weights=correct, minlength=n_bins)
    cf = np.bincount(b, weights=conf, minlength=n_bins)
    return float(np.abs(acc - cf).sum() / len(y))


def _row(y: np.ndarray, proba: np.ndarray, n_bins: int) -> dict[str, float]:
    c = proba.shape[1]
    n = len(y)
    if n == 0:
        return {"n": 0, **{m: math.nan for m in PER_GROUP_METRICS}}
    pred = proba.argmax(axis=1)
    recall = [float((pred[y == k] == k).mean()) for k in range(c) if (y == k).any()]
    out = {"n": n, "acc": float((pred == y).mean()), "bal_acc": float(np.mean(recall))}
    if c == 2:
        out["auc"] = binary_auc(y, proba[:, 1])
        pos, neg = y == 1, y == 0
        out["tpr"] = float((pred[pos] == 1).mean()) if pos.any() else math.nan
        out["fpr"] = float((pred[neg] == 1).mean()) if neg.any() else math.nan
    else:
        out["auc"] = _multiclass_auc(y, proba)
        out["tpr"] = out["fpr"] = math.nan
    out["ece"] = _ece(y, proba, n_bins)
    return out


def group_table(y, proba, groups, group_names: Sequence[str], n_bins: int = 15) -> pd.DataFrame:
    """Rows 'overall' then each group; columns n, acc, bal_acc, auc, tpr, fpr, ece."""
    y, proba, groups = np.asarray(y), np.asarray(proba, dtype=np.float64), np.asarray(groups)
    validate_inputs(y, proba, groups, len(group_names))
    rows = {"overall": _row(y, proba, n_bins)}
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(len(group_names) + 1))
    for g, name in enumerate(group_names):
        idx = order[bounds[g]:bounds[g + 1]]
        rows[str(name)] = _row(y[idx], proba[idx], n_bins)
    return pd.DataFrame.from_dict(rows, orient="index")[["n", *PER_GROUP_METRICS]]


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Flat dict: `m`, `m/group:<name>`, `m/worst`, `m/gap` per metric, and `n/group:<name>`."""
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
    """Demographic parity, equal opportunity and equalized odds differences (binary; NaN otherwise)."""
    y, proba, groups = np.asarray(y), np.asarray(proba), np.asarray(groups)
    if proba.shape[1] != 2:
        return {"dp_diff": math.nan, "eopp_diff": math.nan, "eodds_diff": math.nan}
    pred1 = (proba.argmax(axis=1) == 1).astype(np.float64)
    rate = accuracy_by_group(pred1, groups, n_groups)
    pos, neg = y == 1, y == 0
    tpr = accuracy_by_group(pred1[pos], groups[pos], n_groups)
    fpr = accuracy_by_group(pred1[neg], groups[neg], n_groups)
    tpr_d, fpr_d = _spread(tpr), _spread(fpr)
    return {"dp_diff": _spread(rate), "eopp_diff": tpr_d, "eodds_diff": float(np.nanmax([tpr_d, fpr_d]))
            if not (math.isnan(tpr_d) and math.isnan(fpr_d)) else math.nan}


def evaluate(y, proba, groups, group_names: Sequence[str]) -> dict[str, float]:
    """Every per-group metric (overall, each group, worst, gap) plus the fairness differences."""
    out = summarize(group_table(y, proba, groups, group_names))
    out.update(fairness_differences(y, proba, groups, len(group_names)))
    return out
