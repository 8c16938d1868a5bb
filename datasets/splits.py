"""Deterministic, stratified and subject-grouped split assignment (vectorised)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from datasets.base import SPLITS, DatasetError


def _check_fractions(fractions: tuple[float, ...]) -> np.ndarray:
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or len(f) < 2 or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise DatasetError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    return f


def stratified_assign(
    strata: pd.DataFrame | np.ndarray,
    fractions: tuple[float, ...],
    seed: int,
    names: tuple[str, ...] = SPLITS,
) -> np.ndarray:
    """Assign each row a split name so that every stratum is split in `fractions`.

    `strata` holds the stratification key per row (columns are combined). Within
    a stratum, rows are ordered by a seeded random key and cut at the cumulative
    fractions, so each stratum of n rows gets round(n * f) rows per part and the
    result depends only on (strata, seed).
    """
    f = _check_fractions(fractions)
    if len(f) != len(names):
        raise DatasetError(f"{len(f)} fractions for {len(names)} split names")
    if isinstance(strata, pd.DataFrame):
        codes = strata.groupby(list(strata.columns), sort=True, observed=True).ngroup().to_numpy()
    else:
        codes = pd.factorize(np.asarray(strata), sort=True)[0]
    n = len(codes)
    rng = np.random.default_rng(seed)
    key = rng.random(n)
    order = np.lexsort((key, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    counts = np.diff(np.r_[starts, n])
    stratum_start = np.repeat(starts, counts)
    stratum_size = np.repeat(counts, counts)
    rank = np.arange(n) - stratum_start
    # Cut points per stratum: rounded cumulative fractions; a row goes to the first
    # part whose cut exceeds its rank.
    cuts = np.rint(np.outer(stratum_size, np.cumsum(f))).astype(np.int64)
    part = (rank[:, None] >= cuts).sum(axis=1)
    part = np.minimum(part, len(f) - 1)
    out = np.empty(n, dtype=object)
    out[order] = np.asarray(names, dtype=object)[part]
    return out


def grouped_assign(
    subjects: np.ndarray,
    strata: pd.DataFrame,
    fractions: tuple[float, ...],
    seed: int,
    names: tuple[str, ...] = SPLITS,
) -> np.ndarray:
    """Like `stratified_assign` but every subject (patient, lesion) lands in one split only.

    Subjects are stratified by the strata of their first row.
    """
    subjects = np.asarray(subjects)
    codes, uniques = pd.factorize(subjects)
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    subject_strata = strata.iloc[first].reset_index(drop=True)
    subject_split = stratified_assign(subject_strata, fractions, seed, names)
    return subject_split[codes]
