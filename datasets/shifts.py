"""Out-of-domain splits, `shift:<name>`: how options name them, how rows join them, what every shift must leave.

A dataset table may hold, besides train / val / test, any number of shift splits. Nothing that
decides reads them (training, early stopping, search, selection); every trial scores them like
test. They come from a split file whose `split` column says `shift:<name>`, from the tabular
option `shift=COLUMN:VALUE[,VALUE...]` (`ShiftSpec`), or from a dataset's own domains
(digits-shift's held-out styles, acs-income's `test_state` / `test_year`).

Whatever made them, a shift must leave every group of every attribute, and every class, with
rows in train and in val (`check_shift_splits`; intersections are checked by `Grouping`), and
two shifts may not share a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from noharm.datasets.base import SHIFT_PREFIX, DatasetError, shift_splits

SHOWN = 12  # values named in an "unknown value" message
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def shift_name(value: Any) -> str:
    """The split name of a domain value: `shift:<value>` with every character outside letters, digits,
    `_ . -` replaced by `_` (adult's `Outlying-US(Guam-USVI-etc)` becomes `shift:Outlying-US_Guam-USVI-etc_`)."""
    return SHIFT_PREFIX + _UNSAFE.sub("_", str(value).strip())


@dataclass(frozen=True)
class ShiftSpec:
    """Rows whose raw `column` holds one of `values` leave train / val / test for `splits` (one per value)."""

    column: str
    values: tuple[str, ...]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(shift_name(v) for v in self.values)


def parse_shift(value: Any, allowed: Mapping[str, str], refused: Mapping[str, str], dataset: str,
                option: str = "shift") -> ShiftSpec:
    """`COLUMN:VALUE[,VALUE...]` (or, from YAML, `{COLUMN: [VALUE, ...]}`) as a ShiftSpec; one DatasetError line
    for a malformed value, a column not in `allowed`, a column in `refused` (a sensitive attribute or the
    target, with the reason), a repeated value, or two values that give the same split name."""
    where = f"{dataset}: {option}"
    if isinstance(value, Mapping) and len(value) == 1:
        column, raw = next(iter(value.items()))
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    elif isinstance(value, str) and ":" in value:
        column, _, rest = value.partition(":")
        items = rest.split(",")
    else:
        raise DatasetError(f"{where}={value!r}: expected COLUMN:VALUE[,VALUE...], e.g. "
                           f"{next(iter(allowed), 'column')}:VALUE")
    column = str(column).strip()
    values = tuple(str(v).strip() for v in items if str(v).strip())
    choices = ", ".join(allowed) or "none"
    if column in refused:
        raise DatasetError(f"{where}: column {column!r} is {refused[column]}; a shift moves rows by another column "
                           f"(allowed: {choices})")
    if column not in allowed:
        raise DatasetError(f"{where}: unknown column {column!r}; allowed: {choices}")
    if not values:
        raise DatasetError(f"{where}: no value given for column {column!r}; write {column}:VALUE[,VALUE...]")
    check_distinct_names([(f"value {v!r}", shift_name(v)) for v in values], where)
    return ShiftSpec(column, values)


def check_distinct_names(named: Iterable[tuple[str, str]], where: str) -> None:
    """One DatasetError line when two sources (described in words, e.g. "value 'A43'") give one shift split name."""
    seen: dict[str, str] = {}
    for source, name in named:
        if name in seen:
            same = "is repeated" if seen[name] == source else f"and {source} both give split {name}"
            raise DatasetError(f"{where}: {seen[name]} {same}; give each shift a distinct name")
        seen[name] = source


def assign_shift(domains: pd.DataFrame, specs: Sequence[ShiftSpec], dataset: str) -> np.ndarray:
    """Per row: the shift split its domain value sends it to, or "" (in domain). One DatasetError line for a
    value the column does not hold (the values it holds are listed)."""
    out = np.full(len(domains), "", dtype=object)
    for spec in specs:
        column = domains[spec.column].astype(str).to_numpy()
        present = pd.unique(column)
        for value, split in zip(spec.values, spec.splits):
            hit = column == value
            if not hit.any():
                shown = sorted(map(str, present))
                more = f", ... ({len(shown)} values)" if len(shown) > SHOWN else ""
                raise DatasetError(f"{dataset}: shift value {value!r} is not in column {spec.column!r}; "
                                   f"its values: {', '.join(shown[:SHOWN])}{more}")
            out[hit & (out == "")] = split
    return out


def check_shift_splits(table: pd.DataFrame, attributes: Sequence[str], dataset: str) -> None:
    """With shift splits present: every value of every attribute, and every class, keeps rows in train and in
    val (one DatasetError line naming the first that does not). Without shift splits: nothing to check."""
    shifts = shift_splits(table["split"])
    if not shifts:
        return
    split = table["split"].to_numpy(object)
    what = f"the shift splits {', '.join(shifts)} leave" if len(shifts) > 1 else f"the shift split {shifts[0]} leaves"
    columns = [(a, f"group {{value!r}} of {a}") for a in attributes] + [("y", "class {value!r}")]
    for column, label in columns:
        values = table[column].to_numpy()
        for value in pd.unique(values):
            rows = values == value
            for part in ("train", "val"):
                if not (rows & (split == part)).any():
                    raise DatasetError(f"{dataset}: {what} {label.format(value=_plain(value))} with no {part} "
                                       f"rows; choose other shift values (every group and class must stay in "
                                       f"train and val)")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def check_requested_shifts(dataset, attributes: Sequence[str], seeds: Sequence[int], min_group_size: int = 10) -> None:
    """Load `dataset` on every seed and group it by every attribute when its options ask for shift splits
    (`GroupDataset.requests_shifts`), so an unknown value, a name two shifts share, or a group or class left
    without train or val rows fails (one DatasetError line) before a sweep creates anything."""
    if not dataset.requests_shifts():
        return
    from noharm.datasets.grouping import Grouping

    for seed in seeds:
        bundle = dataset.load(int(seed))
        for attribute in attributes:
            Grouping.from_table(bundle.table, attribute, bundle.attributes, min_group_size)
