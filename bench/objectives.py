"""Validation objectives by name: `val/worst_group_auc`, `acc`, `auc/worst`, ..."""

from __future__ import annotations

import math

import numpy as np

from noharm.analysis.metrics import evaluate
from noharm.bench.errors import ConfigError

ALIASES = {
    "worst_group_acc": "acc/worst",
    "worst_group_auc": "auc/worst",
    "worst_group_bal_acc": "bal_acc/worst",
    "accuracy": "acc",
    "gap_acc": "acc/gap",
    "gap_auc": "auc/gap",
}
# Objectives where smaller is better are negated so every objective is maximised.
MINIMISED_SUFFIXES = ("/gap",)
VALID = ("acc", "bal_acc", "auc", "acc/worst", "auc/worst", "bal_acc/worst", "acc/gap", "auc/gap")


def canonical(name: str) -> str:
    """`val/worst_group_auc` -> `auc/worst`; raises ConfigError for names we do not know."""
    key = name.removeprefix("val/")
    key = ALIASES.get(key, key)
    if key not in VALID:
        raise ConfigError(
            f"unknown objective {name!r}; choose one of: {', '.join(VALID)} or {', '.join('val/' + a for a in ALIASES)}"
        )
    return key


def make_objective(name: str, y: np.ndarray, groups: np.ndarray, group_names: list[str]):
    """A function proba -> score (higher is better) on fixed validation rows; NaN scores count as -inf."""
    key = canonical(name)
    sign = -1.0 if key.endswith(MINIMISED_SUFFIXES) else 1.0

    def score(proba: np.ndarray) -> float:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one-class groups warn every epoch otherwise
            value = evaluate(y, proba, groups, group_names)[key]
        return -math.inf if value is None or math.isnan(value) else sign * float(value)

    return score
