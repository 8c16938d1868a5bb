"""Turn one sensitive attribute, or the intersection of several, into integer group ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from noharm.datasets.base import SPLITS, DatasetError, shift_splits

# Joins attribute values into an intersectional group name. Chosen so names are
# valid MLflow metric-name fragments (no '+', '=' or '&' allowed there).
INTERSECTION_SEPARATOR = " x "


@dataclass(frozen=True)
class Grouping:
    """Group ids per row, readable names, and the groups that are too small to trust."""

    spec: str
    attributes: tuple[str, ...]
    ids: np.ndarray  # [N] int64 in 0..G-1
    names: tuple[str, ...]
    counts: pd.DataFrame  # index: group name, columns: train, val, test, then any shift splits; sample counts
    small_groups: tuple[str, ...]  # groups below the minimum size in train, val or test

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @classmethod
    def from_table(cls, table: pd.DataFrame, spec: str, valid: list[str], min_size: int = 10) -> "Grouping":
        """Build the grouping for `spec` ("sex" or "sex+race") over `table`.

        Intersections that never occur are not groups; groups with fewer than
        `min_size` samples in train, val or test are kept and listed in `small_groups`.
        When the table holds shift splits, every group needs train and val rows
        (DatasetError otherwise: a shift must not take a group out of training).
        """
        attrs = tuple(a.strip() for a in spec.split("+"))
        unknown = [a for a in attrs if a not in valid]
        if not spec or unknown or len(set(attrs)) != len(attrs):
            raise DatasetError(
                f"unknown attribute {spec!r}; choose one of: {', '.join(valid)} (or several joined by '+')"
            )
        values = table[list(attrs)].astype(str)
        labels = values.iloc[:, 0]
        for a in attrs[1:]:
            labels = labels + INTERSECTION_SEPARATOR + values[a]
        ids, names = pd.factorize(labels, sort=True)
        shifts = shift_splits(table["split"])
        counts = (
            pd.crosstab(pd.Categorical.from_codes(ids, names), table["split"])
            .reindex(columns=[*SPLITS, *shifts], fill_value=0)
        )
        counts.index = list(names)
        small = tuple(str(g) for g in counts.index[(counts[list(SPLITS)] < min_size).any(axis=1)])
        for part in ("train", "val") if shifts else ():
            empty = counts.index[counts[part] == 0]
            if len(empty):
                held = f"splits {', '.join(shifts)} are" if len(shifts) > 1 else f"split {shifts[0]} is"
                raise DatasetError(f"group {empty[0]!r} of {'+'.join(attrs)} has no {part} rows once the shift "
                                   f"{held} held out; choose other shift values or another attribute")
        return cls(
            spec="+".join(attrs),
            attributes=attrs,
            ids=ids.astype(np.int64),
            names=tuple(str(n) for n in names),
            counts=counts,
            small_groups=small,
        )
