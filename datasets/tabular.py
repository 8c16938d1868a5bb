"""Shared machinery of the tabular datasets: feature encoding, filters counted by reason, official CSV files.

A tabular loader subclasses `TabularDataset`, turns its source into a
`TabularRows` (the table of ids, labels and attributes, the raw feature
columns, and what was dropped and why) in `read_rows`, and declares which
feature columns are numeric and which categorical; `load` splits the rows for
the seed, stratified by every attribute jointly and the label, and fits the
encoder on the train rows only.

Natural shift: a loader that declares `shift_columns` (raw, non-sensitive
columns, e.g. adult's `workclass`) and fills `TabularRows.domains` with them
takes `shift=COLUMN:VALUE[,VALUE...]`: the rows holding those values leave
train / val / test for `shift:<VALUE>` before the split (`noharm.datasets.shifts`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from noharm.datasets.base import DataBundle, DatasetError, GroupDataset, is_shift
from noharm.datasets.shifts import ShiftSpec, assign_shift, check_distinct_names, parse_shift
from noharm.datasets.splits import stratified_assign

SHOWN_VALUES = 8  # allowed values named in an "unexpected value" message


def encode_features(
    features: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    fit_rows: np.ndarray,
    log_scaled: Iterable[str] = (),
    max_categories: int | None = None,
) -> np.ndarray:
    """Standardised numerics (log1p first for `log_scaled`) then one-hot categoricals, fitted on `fit_rows` only.

    Categories unseen in the fitted rows encode as all zeros. `max_categories`
    keeps the most frequent codes of each categorical column and pools the rest
    into one column (for columns with hundreds of codes).
    """
    feats = features[numeric + categorical].copy()
    log_scaled = list(log_scaled)
    if log_scaled:
        feats[log_scaled] = np.log1p(feats[log_scaled])
    encoder = ColumnTransformer([
        ("num", StandardScaler(), numeric),
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist" if max_categories else "ignore",
                              sparse_output=False, max_categories=max_categories), categorical),
    ])
    encoder.fit(feats[fit_rows])
    return encoder.transform(feats).astype(np.float32)


def embedded_file(name: str):
    """Context manager giving the filesystem path of a file shipped in datasets/data/."""
    return resources.as_file(resources.files("noharm.datasets") / "data" / name)


def keep_rows(frame: pd.DataFrame, keep: pd.Series | np.ndarray, reason: str, dropped: dict[str, int]) -> pd.DataFrame:
    """Rows of `frame` where `keep` holds; the others are counted under `reason` (rules apply in call order)."""
    keep = np.asarray(keep, dtype=bool)
    n = int((~keep).sum())
    if n:
        dropped[reason] = dropped.get(reason, 0) + n
    return frame[keep]


@dataclass
class TabularRows:
    """What a tabular loader reads: the per-row table, the raw feature columns, and its drops.

    `table` has `sample_id`, `y` (0/1) and one string column per attribute;
    `features` is aligned with it row by row. `notes` are facts worth printing
    in `noharm datasets check` (e.g. a row count to compare with the publisher's).
    `domains` (aligned too) holds the raw values of the loader's `shift_columns`.
    """

    table: pd.DataFrame
    features: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    domains: pd.DataFrame | None = None


class TabularDataset(GroupDataset):
    """A tabular dataset split at random per seed (60/20/20), stratified by every attribute and the label."""

    kind = "tabular"
    fractions: ClassVar[tuple[float, float, float]] = (0.6, 0.2, 0.2)
    numeric: ClassVar[list[str]] = []
    categorical: ClassVar[list[str]] = []
    log_scaled: ClassVar[list[str]] = []
    max_categories: ClassVar[int | None] = None
    class_names: ClassVar[list[str]] = ["no", "yes"]
    # Raw columns the `shift` option may move rows by (name -> what its values are), filled into
    # `TabularRows.domains` by `read_rows`; and the raw columns behind the attributes and the target,
    # which it refuses (a shift by a sensitive column would take a group out of training).
    shift_columns: ClassVar[dict[str, str]] = {}
    attribute_columns: ClassVar[tuple[str, ...]] = ()
    applies_split_file_itself = True  # before fitting on train rows and before the shift

    def __init__(self, root: str | os.PathLike | None = None, target: str | None = None, shift: Any = None,
                 **options: Any):
        super().__init__(root=str(root) if root else None, target=target, **options)
        self.root_path = Path(str(root)).expanduser().absolute() if root else None
        refused = {c: "the target" if c in self.targets else "a sensitive attribute (or the raw column of one)"
                   for c in (*self.attribute_columns, *self.attributes, *self.targets)}
        self.shift_specs: list[ShiftSpec] = (
            [parse_shift(shift, self.shift_columns, refused, self.name)] if shift not in (None, "") else [])
        # Filled by `load`: facts for `noharm datasets check`.
        self.notes: list[str] = []

    @classmethod
    def shift_help(cls) -> str:
        if not cls.shift_columns:
            return ""
        return f"shift=COLUMN:VALUE[,VALUE...], COLUMN one of: {', '.join(cls.shift_columns)}"

    def requests_shifts(self) -> bool:
        return bool(self.shift_specs) or super().requests_shifts()

    def read_rows(self) -> TabularRows:
        """Read the source into a `TabularRows` (filters applied, drops counted)."""
        raise NotImplementedError

    def feature_columns(self) -> tuple[list[str], list[str]]:
        """(numeric, categorical) feature columns used for this instance's options."""
        return list(self.numeric), list(self.categorical)

    def assign_splits(self, rows: TabularRows, keep: np.ndarray, seed: int) -> np.ndarray:
        """The train / val / test split of the rows where `keep` holds (the in-domain rows), for `seed`:
        stratified by every attribute jointly and the label, in `fractions`."""
        table = rows.table.reset_index(drop=True)[keep]
        return stratified_assign(table[[*self.attributes, "y"]], self.fractions, int(seed))

    def load(self, seed: int) -> DataBundle:
        """Read the rows, hold out the shift rows, split the rest for `seed`, encode the features fitted on train."""
        self.validate_files()
        rows = self.read_rows()
        self.notes = list(rows.notes)
        table = rows.table.reset_index(drop=True)
        if table.empty:
            reasons = ", ".join(f"{k}: {v}" for k, v in rows.dropped.items()) or "the source holds none"
            raise DatasetError(f"{self.name}: no usable rows ({reasons})")
        shifted = self.shifted_rows(rows)
        in_domain = shifted == ""
        split = np.empty(len(table), dtype=object)
        split[in_domain] = self.assign_splits(rows, in_domain, seed)
        split = self.file_split(table["sample_id"], split)  # a split file's rows, before fitting on train
        if not in_domain.all():
            named = [("the split file", s) for s in pd.unique(split[in_domain]) if is_shift(s)]
            check_distinct_names(named + [(f"shift value {v!r}", name) for spec in self.shift_specs
                                          for v, name in zip(spec.values, spec.splits)], self.name)
            split[~in_domain] = shifted[~in_domain]
        table.insert(1, "split", split)
        table["y"] = table["y"].astype(np.int64)
        numeric, categorical = self.feature_columns()
        x = encode_features(
            rows.features.reset_index(drop=True), numeric, categorical, split == "train",
            log_scaled=[c for c in self.log_scaled if c in numeric], max_categories=self.max_categories,
        )
        return DataBundle(
            name=self.name, table=table, x=x, num_classes=2, kind="tabular",
            class_names=list(self.class_names), attributes=list(self.attributes), dropped=dict(rows.dropped),
        )

    def shifted_rows(self, rows: TabularRows) -> np.ndarray:
        """Per row: the shift split the `shift` option sends it to, or "" (in domain)."""
        if not self.shift_specs:
            return np.full(len(rows.table), "", dtype=object)
        if rows.domains is None:
            raise DatasetError(f"{self.name}: the loader gave no domain columns; it cannot take a shift option")
        return assign_shift(rows.domains.reset_index(drop=True), self.shift_specs, self.name)


class TabularFileDataset(TabularDataset):
    """A tabular dataset read from its publisher's CSV file under `--data-root` (never shipped)."""

    needs_root = True
    # Where the publisher's file may sit under the root (first match wins), and where to get it.
    file_candidates: ClassVar[tuple[str, ...]] = ()
    source_hint: ClassVar[str] = ""

    def candidates(self) -> list[Path]:
        """Paths, in order of preference, where the official file may be."""
        return [self.root_path / c for c in self.file_candidates]

    def source_file(self) -> Path:
        """The official file, or one DatasetError line naming where it was looked for."""
        for path in self.candidates():
            if path.is_file():
                return path
        looked = " or ".join(str(p) for p in self.candidates())
        raise DatasetError(f"{self.name}: missing {looked}; {self.source_hint}")

    def validate_files(self) -> None:
        """The root exists and holds the official file (one DatasetError line otherwise)."""
        if self.root_path is None or not self.root_path.is_dir():
            raise DatasetError(f"{self.name}: data root {self.root_path} does not exist or is not a folder")
        self.source_file()


def require_columns(frame_columns: Iterable[str], required: Iterable[str], dataset: str, file: str) -> None:
    """One DatasetError line naming the first required column the file lacks."""
    have = set(frame_columns)
    missing = [c for c in required if c not in have]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise DatasetError(f"{dataset}: {file} lacks column {missing[0]!r}{more}; is it the official file?")


def check_values(
    frame: pd.DataFrame, column: str, allowed: Iterable[Any], dataset: str, file: str, line_offset: int = 2,
) -> None:
    """One DatasetError line naming the first row whose `column` is not an allowed value.

    Line numbers count the header as line 1 (row i of the frame is line
    i + `line_offset` of the file, assuming a default RangeIndex).
    """
    allowed = list(allowed)
    bad = ~frame[column].isin(allowed)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame[column].iloc[i]
        shown = ", ".join(map(_show, allowed[:SHOWN_VALUES])) + (", ..." if len(allowed) > SHOWN_VALUES else "")
        what = "is empty" if pd.isna(value) else f"has unexpected value {_show(value)}"
        raise DatasetError(
            f"{dataset}: {file} line {frame.index[i] + line_offset}: {column} {what}; expected one of {shown}"
        )


def _show(value: Any) -> str:
    """A cell as users wrote it: numpy scalars as Python ones, 32.0 as 32."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return repr(value)


def numeric_column(
    frame: pd.DataFrame, column: str, dataset: str, file: str, allow_missing: bool = False, line_offset: int = 2,
) -> pd.Series:
    """`column` as float64, or one DatasetError line naming the first non-numeric (or, unless allowed, empty) cell."""
    values = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    bad = values.isna() & (frame[column].notna() | (not allow_missing))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame[column].iloc[i]
        what = "is empty" if pd.isna(value) else f"has non-numeric value {_show(value)}"
        raise DatasetError(f"{dataset}: {file} line {frame.index[i] + line_offset}: {column} {what}; expected a number")
    return values
