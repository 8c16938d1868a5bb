"""Selection for many problems at once: the batch form of every strategy in `selection.STRATEGIES`.

A `ProblemBatch` is R selection problems over the same G groups (the repeats of a stress test), arrays
[R, G]. `select_batch(strategy, batch)` answers bool [R, G] (which groups take their expert, per
repeat) through the registry `BATCH_STRATEGIES`, filled by the `register_batch_strategy` decorator
beside the strategies' own registry: a strategy with a batch form computes every repeat in a few array
operations, and a strategy without one (a plugin's) is solved repeat by repeat by `selection.select`, so
every registered strategy runs on a batch. Each batch form gives, repeat by repeat, the choice of the
strategy it stands for:

- `erm`, `experts`, `greedy`: elementwise.
- `ip-gap`, `ip-utility`: exact, by scoring all 2^G choices at once when G <= `batch.max_enumerate`,
  with the same lexicographic keys, tolerance and fallbacks as the PuLP programs; above that, each
  repeat is solved by PuLP/CBC.
- `safe`: the exact paired sign test of `selection.select_safe` at level `batch.delta`, on the discordant
  counts `b`, `c` of every repeat. Per-group values do not carry those counts, so a batch without them
  is refused (the registered single-problem `safe` falls back to a worst-case pairing instead).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from noharm.methods import selection as S
from noharm.settings import SELECTION_METRIC

# 2^10 choices x G values per repeat stays a few MB per block of repeats.
MAX_ENUMERATE_GROUPS = 10


@dataclass(frozen=True)
class ProblemBatch:
    """R selection problems over G groups: per-repeat, per-group validation inputs, arrays [R, G]."""

    expert: np.ndarray  # the expert's metric, NaN where unknown
    erm: np.ndarray  # pooled ERM's metric, NaN where unknown
    sizes: np.ndarray  # positive validation counts (utility weights)
    metric: str = SELECTION_METRIC.default
    b: np.ndarray | None = None  # paired evidence for `safe`: samples the expert gets right and ERM wrong
    c: np.ndarray | None = None  # ... and the expert wrong and ERM right
    delta: float = S.SAFE_DELTA  # the level of `safe`
    max_enumerate: int = MAX_ENUMERATE_GROUPS  # most groups the integer programs enumerate

    def __post_init__(self) -> None:
        SELECTION_METRIC.check(self.metric)
        S.check_delta(self.delta)

    @property
    def shape(self) -> tuple[int, int]:
        return self.erm.shape

    @property
    def n_groups(self) -> int:
        return self.erm.shape[1]

    @property
    def improves(self) -> np.ndarray:
        """[R, G]: the expert is known and strictly better than a known ERM value (`SelectionProblem.improves`)."""
        return improves(self.expert, self.erm)


# A batch strategy maps a batch to use_expert bool [R, G].
BatchStrategy = Callable[[ProblemBatch], np.ndarray]
BATCH_STRATEGIES: dict[str, BatchStrategy] = {}


def register_batch_strategy(name: str) -> Callable[[BatchStrategy], BatchStrategy]:
    """Decorator adding the batch form of the registered strategy `name` to `BATCH_STRATEGIES`."""

    def deco(fn: BatchStrategy) -> BatchStrategy:
        if name not in S.STRATEGIES:
            raise ValueError(f"batch form of {name!r}: register the strategy itself first (selection.register_strategy)")
        if name in BATCH_STRATEGIES and BATCH_STRATEGIES[name] is not fn:
            raise ValueError(f"batch form of selection strategy {name!r} registered twice")
        BATCH_STRATEGIES[name] = fn
        return fn

    return deco


def select_batch(strategy: str, batch: ProblemBatch) -> np.ndarray:
    """Which groups take their expert in every problem of `batch`: bool [R, G] (see the module docstring)."""
    if strategy not in S.STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; choose one of: {', '.join(S.STRATEGIES)}")
    form = BATCH_STRATEGIES.get(strategy)
    return form(batch) if form is not None else select_each(strategy, batch)


def select_each(strategy: str, batch: ProblemBatch) -> np.ndarray:
    """`selection.select` on every problem of the batch in turn: bool [R, G]."""
    use = [S.select(batch.expert[i], batch.erm[i], batch.sizes[i], strategy, batch.metric).use_expert
           for i in range(batch.shape[0])]
    return np.array(use, dtype=bool).reshape(batch.shape)


def improves(expert: np.ndarray, erm: np.ndarray) -> np.ndarray:
    """Groups whose expert is known and strictly better than a known ERM value (as `SelectionProblem.improves`)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(expert) & np.isfinite(erm) & (expert > erm)


@register_batch_strategy("erm")
def _all_erm(batch: ProblemBatch) -> np.ndarray:
    return np.zeros(batch.shape, bool)


@register_batch_strategy("experts")
def _all_experts(batch: ProblemBatch) -> np.ndarray:
    return np.ones(batch.shape, bool)


@register_batch_strategy("greedy")
def _greedy(batch: ProblemBatch) -> np.ndarray:
    return batch.improves


@register_batch_strategy("safe")
def _safe(batch: ProblemBatch) -> np.ndarray:
    if batch.b is None or batch.c is None:
        raise ValueError("selection strategy 'safe' on a batch needs the paired counts b and c of every repeat")
    p = S.sign_test_p_value(batch.b, batch.c)
    return (batch.b + batch.c > 0) & (p <= batch.delta)


@register_batch_strategy("ip-gap")
def _ip_gap(batch: ProblemBatch) -> np.ndarray:
    return _integer_program("ip-gap", batch)


@register_batch_strategy("ip-utility")
def _ip_utility(batch: ProblemBatch) -> np.ndarray:
    return _integer_program("ip-utility", batch)


def _integer_program(strategy: str, batch: ProblemBatch) -> np.ndarray:
    if batch.n_groups <= batch.max_enumerate:
        return enumerate_ip(strategy, batch.expert, batch.erm, batch.sizes, batch.metric)
    return select_each(strategy, batch)


def all_choices(n_groups: int) -> np.ndarray:
    """bool [2^G, G]: every subset of groups, the empty one first."""
    return np.array(list(itertools.product([False, True], repeat=n_groups)), dtype=bool)[:, ::-1]


def enumerate_ip(strategy: str, expert: np.ndarray, erm: np.ndarray, sizes: np.ndarray,
                 metric: str = SELECTION_METRIC.default) -> np.ndarray:
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
