"""Turn one sensitive attribute, or the intersection of several, into integer group ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from noharm.datasets.base import DatasetError

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
    counts: pd.DataFrame  # index: group name, columns: splits, values: sample counts
    small_groups: tuple[str, ...]  # groups below the minimum size in some split

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @classmethod
    def from_table(cls, table: pd.DataFrame, spec: str, valid: list[str], min_size: int = 10) -> "Grouping":
        """Build the grouping for `spec` ("sex" or "sex+race") over `table`.

        Intersections that never occur are not groups; groups with fewer than
        `min_size` samples in any split are kept and listed in `small_groups`.
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
        counts = (
            pd.crosstab(pd.Categorical.from_codes(ids, names), table["split"])
            .reindex(columns=["train", "val", "test"], fill_value=0)
        )
        counts.index = list(names)
        small = tuple(str(g) for g in counts.index[(counts < min_size).any(axis=1)])
        return cls(
            spec="+".join(attrs),
            attributes=attrs,
            ids=ids.astype(np.int64),
            names=tuple(str(n) for n in names),
            counts=counts,
            small_groups=small,
        )
