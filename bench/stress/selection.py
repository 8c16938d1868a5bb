"""Selection for many stress repeats at once: per-repeat validation statistics -> `methods.selection_batch`.

Inputs are per-repeat, per-group validation values, arrays [R, G] (`ValStats`).
`choose` hands them to the batch form of the strategy, looked up in the
selection registries of `methods` (`selection.STRATEGIES` and, beside it,
`selection_batch.BATCH_STRATEGIES`): every registered strategy is a stress
selector, with no list of names here. The integer programs are solved exactly
by enumerating all 2^G choices at once when G <= `max_enumerate`, by PuLP/CBC
repeat by repeat above that; `safe` runs the exact paired sign test on the
repeats' discordant counts. Group-blind application (`blind:<strategy>`, see
`bench.stress.runner`) applies one of these choices by predicted group; it is
not a choice of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noharm.methods import selection as S
from noharm.methods.selection_batch import MAX_ENUMERATE_GROUPS, ProblemBatch, all_choices, enumerate_ip, select_batch

__all__ = ["MAX_ENUMERATE_GROUPS", "ValStats", "all_choices", "choose", "choosers", "enumerate_ip"]


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


def choosers() -> list[str]:
    """The strategies a stress selector may name: every registered selection strategy."""
    return list(S.STRATEGIES)


def choose(strategy: str, stats: ValStats, delta: float = S.SAFE_DELTA,
           max_enumerate: int = MAX_ENUMERATE_GROUPS) -> np.ndarray:
    """Which groups take their expert, per repeat: bool [R, G]."""
    if strategy not in S.STRATEGIES:
        raise ValueError(f"unknown selector {strategy!r} for stress repeats; choose one of: {', '.join(choosers())}")
    # A group without rows keeps ERM (NaN values); its size of 1 only passes the input checks, as in compose.
    batch = ProblemBatch(expert=stats.expert, erm=stats.erm, sizes=np.maximum(stats.n, 1.0), b=stats.b, c=stats.c,
                         delta=delta, max_enumerate=max_enumerate)
    return select_batch(strategy, batch)
