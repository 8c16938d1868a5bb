"""Deterministic, stratified and subject-grouped split assignment (vectorised), and splits read from a file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from noharm.datasets.base import SHIFT_PREFIX, SPLITS, DatasetError, valid_split


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


# ---- a published split from a file -------------------------------------------------------------
SPLIT_FILE_SHOWN = 3  # offending ids named in the one-line error


def split_file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a split file's bytes (part of trial keys: same path, other content, other key)."""
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError as exc:
        raise DatasetError(f"split_file {str(path)!r} cannot be read ({exc.strerror or exc}); "
                           "give a CSV with columns sample_id and split") from None


def read_split_file(path: str | os.PathLike, id_column: str | None = None) -> pd.DataFrame:
    """The file's (id, split) rows as a two-column frame `id, split`; DatasetError (one line) when malformed.

    The id column is `id_column`, else `sample_id`. Split names must be train, val, test or an
    out-of-domain `shift:<name>` (letters, digits, `_ . -`), and no id may appear twice.
    """
    where = f"split_file {str(path)!r}"
    try:
        raw = pd.read_csv(Path(path).expanduser(), dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DatasetError(f"{where} not found; give the path of a CSV with columns sample_id and split") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"{where} is not a readable CSV ({first})") from None
    column = id_column or "sample_id"
    missing = [c for c in (column, "split") if c not in raw.columns]
    if missing:
        hint = "" if id_column else " (name the id column with --option split_id_column=NAME)"
        raise DatasetError(f"{where} lacks column(s) {', '.join(missing)}; it has: {', '.join(map(str, raw.columns))}{hint}")
    table = pd.DataFrame({"id": raw[column].str.strip(), "split": raw["split"].str.strip()})
    bad = table.loc[~table["split"].map(valid_split), "split"]
    if len(bad):
        raise DatasetError(f"{where}: split {bad.iloc[0]!r} on {len(bad)} row(s) is not one of "
                           f"{', '.join(SPLITS)} or {SHIFT_PREFIX}<name> (letters, digits, _ . -); rename it")
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        shown = ", ".join(map(repr, dup.unique()[:SPLIT_FILE_SHOWN]))
        raise DatasetError(f"{where}: {dup.nunique()} id(s) appear more than once, e.g. {shown}; "
                           "list each sample once")
    return table


def splits_from_file(path: str | os.PathLike, sample_ids: np.ndarray, dataset: str,
                     id_column: str | None = None) -> np.ndarray:
    """The split of every sample (in `sample_ids` order) as the file gives it, or one DatasetError line.

    An id matches a sample id exactly, or else by its file name: a path such as
    `UTKFace/1_0_0_x.jpg.chip.jpg` matches the sample `1_0_0_x.jpg.chip.jpg`. Every id of the file
    must be a sample of the dataset, and every sample must be in the file.
    """
    table = read_split_file(path, id_column)
    where = f"split_file {str(path)!r}"
    ids = pd.Index(np.asarray(sample_ids).astype(str))
    pos = ids.get_indexer(table["id"])
    unmatched = pos < 0
    if unmatched.any():  # a path-like id: try its file name
        names = table.loc[unmatched, "id"].str.replace("\\", "/", regex=False).str.rsplit("/", n=1).str[-1]
        pos[unmatched] = ids.get_indexer(names)
    unknown = table["id"][pos < 0]
    if len(unknown):
        shown = ", ".join(map(repr, unknown.iloc[:SPLIT_FILE_SHOWN]))
        raise DatasetError(f"{where}: {len(unknown)} id(s) are not samples of {dataset} (e.g. {shown}); "
                           f"ids are {dataset}'s sample_id values (`noharm datasets check` shows the dataset)")
    if len(np.unique(pos)) != len(pos):
        twice = ids[pd.Series(pos).value_counts().index[0]]
        raise DatasetError(f"{where}: two ids name the same sample {twice!r}; list each sample once")
    out = np.full(len(ids), None, dtype=object)
    out[pos] = table["split"].to_numpy(object)
    absent = np.flatnonzero(pd.isna(out))
    if len(absent):
        shown = ", ".join(repr(ids[i]) for i in absent[:SPLIT_FILE_SHOWN])
        raise DatasetError(f"{where}: {len(absent)} of the {len(ids)} samples of {dataset} are missing from the "
                           f"file (e.g. {shown}); give every sample a split")
    return out
