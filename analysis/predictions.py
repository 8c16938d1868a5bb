"""The predictions table: the universal currency every metric, selector and table is computed from.

Columns: `sample_id, split, y, group` (group name), `group_id` (int), and for
each candidate c and class k a probability column `proba/<c>/<k>`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

PROBA_PREFIX = "proba/"
KEY_COLUMNS = ("sample_id", "split", "y", "group", "group_id")


def proba_column(candidate: str, k: int) -> str:
    return f"{PROBA_PREFIX}{candidate}/{k}"


def build(base: pd.DataFrame, scores: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Predictions table from key columns and {candidate: proba [N, C]}."""
    missing = set(KEY_COLUMNS) - set(base.columns)
    if missing:
        raise ValueError(f"predictions need columns {sorted(missing)}")
    cols = {name: base[name].to_numpy() for name in KEY_COLUMNS}
    for cand, proba in scores.items():
        if "/" in cand:
            raise ValueError(f"candidate name {cand!r} must not contain '/'")
        if len(proba) != len(base):
            raise ValueError(f"candidate {cand!r} scored {len(proba)} rows, table has {len(base)}")
        for k in range(proba.shape[1]):
            cols[proba_column(cand, k)] = proba[:, k].astype(np.float32)
    return pd.DataFrame(cols)


def candidates(df: pd.DataFrame) -> list[str]:
    """Candidate names in column order."""
    seen: dict[str, None] = {}
    for col in df.columns:
        if col.startswith(PROBA_PREFIX):
            seen[col[len(PROBA_PREFIX):].rsplit("/", 1)[0]] = None
    return list(seen)


def proba(df: pd.DataFrame, candidate: str) -> np.ndarray:
    """float64 [N, C] probabilities of one candidate, renormalised against float32 rounding."""
    cols = [c for c in df.columns if c.startswith(f"{PROBA_PREFIX}{candidate}/")]
    if not cols:
        raise KeyError(f"no candidate {candidate!r} in predictions; have: {', '.join(candidates(df))}")
    cols.sort(key=lambda c: int(c.rsplit("/", 1)[1]))
    p = df[cols].to_numpy(dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


def group_names(df: pd.DataFrame) -> list[str]:
    """Group names ordered by group id."""
    pairs = df[["group_id", "group"]].drop_duplicates().sort_values("group_id")
    return [str(g) for g in pairs["group"]]
