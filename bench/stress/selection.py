"""Selection for many stress repeats at once: every strategy of `methods.selection`, vectorised over repeats.

Inputs are per-repeat, per-group validation values, arrays [R, G]. The
integer programs (`ip-gap`, `ip-utility`) are solved exactly by enumerating
all 2^G choices at once when G <= `MAX_ENUMERATE_GROUPS`, with the same
lexicographic keys, tolerance and fallbacks as the PuLP programs of
`methods.selection`; above that, each repeat calls `select` (PuLP/CBC).
`safe` runs the exact paired sign test on per-repeat discordant counts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from noharm.methods import selection as S

# 2^10 choices x G values per repeat stays a few MB per block of repeats.
MAX_ENUMERATE_GROUPS = 10
CHOOSERS = ("erm", "experts", "greedy", "ip-gap", "ip-utility", "safe")


@dataclass
class ValStats:
    """Per-repeat, per-group validation statistics [R, G] of the expert and ERM (accuracy)."""

    n: np.ndarray  # (weighted) samples
    expert: np.ndarray  # accuracy, NaN where n = 0
    erm: np.ndarray
    b: np.ndarray  # expert right and ERM wrong (counts)
    c: np.ndarray  # expert wrong and ERM right

    @property
    def repeats(self) -> int:
        return self.n.shape[0]


def choose(strategy: str, stats: ValStats, delta: float = S.SAFE_DELTA,
           max_enumerate: int = MAX_ENUMERATE_GROUPS) -> np.ndarray:
    """Which groups take their expert, per repeat: bool [R, G]."""
    e, r = stats.expert, stats.erm
    if strategy == "erm":
        return np.zeros(e.shape, bool)
    if strategy == "experts":
        return np.ones(e.shape, bool)
    if strategy == "greedy":
        return improves(e, r)
    if strategy == "safe":
        S._check_delta(delta)
        p = S.sign_test_p_value(stats.b, stats.c)
        return (stats.b + stats.c > 0) & (p <= delta)
    if strategy in ("ip-gap", "ip-utility"):
        sizes = np.maximum(stats.n, 1.0)  # as compose: a group without rows keeps ERM, weight only passes checks
        if e.shape[1] <= max_enumerate:
            return enumerate_ip(strategy, e, r, sizes)
        return np.array([S.select(e[i], r[i], sizes[i], strategy).use_expert for i in range(len(e))], dtype=bool)
    raise ValueError(f"unknown selector {strategy!r} for stress repeats; choose one of: {', '.join(CHOOSERS)}")


def improves(expert: np.ndarray, erm: np.ndarray) -> np.ndarray:
    """Groups whose expert is known and strictly better than a known ERM value (as `SelectionProblem.improves`)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(expert) & np.isfinite(erm) & (expert > erm)


def all_choices(n_groups: int) -> np.ndarray:
    """bool [2^G, G]: every subset of groups, the empty one first."""
    return np.array(list(itertools.product([False, True], repeat=n_groups)), dtype=bool)[:, ::-1]


def enumerate_ip(strategy: str, expert: np.ndarray, erm: np.ndarray, sizes: np.ndarray,
                 metric: str = "accuracy") -> np.ndarray:
    """Exact `ip-gap` / `ip-utility` for every repeat by scoring all 2^G choices: bool [R, G].

    Keys, in order (ties within `selection.TOL`): ip-gap minimises the gap,
    then maximises the weighted gain over ERM, then minimises the number of
    experts; ip-utility keeps choices whose gap is at most ERM's, maximises
    the gain, then minimises the count. Only groups that improve may take
    their expert (no harm on validation).
    """
    R, G = erm.shape
    masks = all_choices(G)  # [K, G]
    free = improves(expert, erm)  # [R, G]
    # A choice is feasible when every chosen group improves.
    feasible = (masks[None, :, :] & ~free[:, None, :]).sum(axis=2) == 0  # [R, K]
    values = np.where(masks[None], expert[:, None, :], erm[:, None, :])  # [R, K, G]
    gap = np.nan_to_num(_gap(values), nan=0.0)  # no finite value: only all-ERM is feasible anyway
    # Utility weights over the groups with a known ERM value (`SelectionProblem.weights(erm)`).
    raw = sizes if S.UTILITY_WEIGHTING[metric] == "size" else np.ones_like(sizes)
    w = np.where(np.isfinite(erm), raw, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    delta = np.where(free, w * np.nan_to_num(expert - erm), 0.0)  # [R, G]
    gain = delta @ masks.T.astype(np.float64)  # [R, K]
    count = masks.sum(axis=1)  # [K]

    cand = feasible.copy()
    if strategy == "ip-utility":
        erm_gap = _gap(erm[:, None, :])[:, 0]
        limit = np.where(np.isnan(erm_gap), 0.0, erm_gap)
        cand &= gap <= limit[:, None] + S.TOL
        stages = (("gain", -1),)
    elif strategy == "ip-gap":
        stages = (("gap", 1), ("gain", -1))
    else:
        raise ValueError(f"enumerate_ip solves ip-gap or ip-utility, got {strategy!r}")
    keys = {"gap": gap, "gain": gain}
    for name, sign in stages:
        key = sign * keys[name]
        best = np.where(cand, key, np.inf).min(axis=1, keepdims=True)
        cand &= key <= best + S.TOL
    fewest = np.where(cand, count[None, :], G + 1).min(axis=1, keepdims=True)
    cand &= count[None, :] == fewest
    # All-ERM is always feasible, so every repeat has a candidate; take the first (fewest experts, lowest index).
    return masks[cand.argmax(axis=1)]


def _gap(values: np.ndarray) -> np.ndarray:
    """max - min over the finite entries of the last axis; NaN where none is finite."""
    finite = np.isfinite(values)
    hi = np.where(finite, values, -np.inf).max(axis=-1)
    lo = np.where(finite, values, np.inf).min(axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(axis=-1), hi - lo, np.nan)
