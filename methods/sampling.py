"""Group-balanced sampling and loss weights, shared by `resample` and `reweight`.

A *cell* is what gets balanced: the group (`balance="group"`) or the
group x label pair (`balance="group_label"`). Each present cell gets the same
total weight, so a sample's weight is inverse to its cell's frequency.
"""

from __future__ import annotations

import numpy as np
import torch

from noharm.methods.hparams import Choice, HparamError

BALANCE = ("group", "group_label")
# Declared once; `resample` and `reweight` both take it.
BALANCE_HPARAM = Choice("group", choices=BALANCE)


def cell_ids(group: np.ndarray, y: np.ndarray, num_classes: int, balance: str) -> np.ndarray:
    """The cell of every row: its group, or group * num_classes + label."""
    group, y = np.asarray(group, np.int64), np.asarray(y, np.int64)
    if balance == "group":
        return group
    if balance == "group_label":
        return group * num_classes + y
    raise HparamError(f"balance must be one of {list(BALANCE)}, got {balance!r}")


def inverse_frequency_weights(cells: np.ndarray) -> np.ndarray:
    """Per-row weight 1 / (count of the row's cell), rescaled to mean 1 over the rows.

    Every present cell then carries the same total weight (len(cells) / n_cells),
    and a weighted mean loss keeps the scale of an unweighted one.
    """
    cells = np.asarray(cells, np.int64)
    if len(cells) == 0:
        return np.zeros(0, np.float64)
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w * (len(cells) / w.sum())


def balanced_draw(rows: np.ndarray, weights: np.ndarray, generator: torch.Generator, n: int | None = None) -> np.ndarray:
    """`n` rows (default: as many as given) drawn with replacement, row i with probability proportional to weights[i]."""
    rows = np.asarray(rows)
    n = len(rows) if n is None else n
    if len(rows) == 0 or n == 0:
        return rows[:0]
    probs = torch.as_tensor(np.asarray(weights, np.float64))
    picks = torch.multinomial(probs, n, replacement=True, generator=generator).numpy()
    return rows[picks]
