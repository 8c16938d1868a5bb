"""COMPAS recidivism (ProPublica's `compas-scores-two-years.csv`), read from `--data-root`, never shipped.

ProPublica's filter, rule by rule as their analysis applies it (their notebook
"Compas Analysis.ipynb", R/dplyr `filter`, which also drops missing values):

1. `days_b_screening_arrest` within [-30, 30] (missing: dropped): the COMPAS
   screening must be near the arrest, else the charge may be the wrong one;
2. `is_recid != -1` (-1: no COMPAS case found);
3. `c_charge_degree != "O"` (ordinary traffic offences);
4. `score_text != "N/A"` (no score).

On the published file this keeps 6,172 of 7,214 rows, the count their
analysis reports. Then, with `races=black-white` (the default, ProPublica's
comparison), rows of other races are dropped and counted; `races=all` keeps
them (group `other` of `race`, and `race6` gives all six categories).

Target: `two_year_recid`. The COMPAS scores (`decile_score`, `score_text`,
`v_*`) and every outcome column (`is_recid`, `r_*`, `vr_*`, ...) are never
features: features are age, the juvenile and prior counts, the charge degree
and description, and sex, race and age category (attributes stay features, as
in `adult`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.tabular import (
    TabularFileDataset, TabularRows, check_values, keep_rows, numeric_column,
    require_columns,
)

FILE = "compas-scores-two-years.csv"
RACES6 = ["African-American", "Asian", "Caucasian", "Hispanic", "Native American", "Other"]
BLACK_WHITE = ["African-American", "Caucasian"]
SEXES = ["Female", "Male"]
AGE_CATS = ["Less than 25", "25 - 45", "Greater than 45"]
NUMERIC = ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count"]
COUNTS = ["juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count"]
CATEGORICAL = ["sex", "race", "age_cat", "c_charge_degree", "c_charge_desc"]
FILTER_COLUMNS = ["days_b_screening_arrest", "is_recid", "c_charge_degree", "score_text"]
REQUIRED = ["id", *NUMERIC, "sex", "race", "age_cat", "c_charge_desc", *FILTER_COLUMNS, "two_year_recid"]
# Rows ProPublica's analysis keeps from the published file (their notebook prints 6172).
PROPUBLICA_ROWS = 6172
RACE_CHOICES = ("black-white", "all")
SCREENING_DATE = "compas_screening_date"
# Columns a natural shift may move rows by (`shift=COLUMN:VALUE`).
SHIFT_COLUMNS = {"screening_year": f"the year of {SCREENING_DATE}: 2013 or 2014 in the published file",
                 "c_charge_degree": "F felony, M misdemeanour"}


def propublica_filter(raw: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """ProPublica's four rules in their order; each dropped row is counted under the first rule it fails."""
    days = raw["days_b_screening_arrest"]
    df = keep_rows(raw, days.between(-30, 30), "days_b_screening_arrest missing or outside [-30, 30]", dropped)
    df = keep_rows(df, df["is_recid"] != -1, "is_recid = -1 (no COMPAS case found)", dropped)
    df = keep_rows(df, df["c_charge_degree"] != "O", "c_charge_degree O (ordinary traffic offence)", dropped)
    return keep_rows(df, df["score_text"] != "N/A", "score_text N/A", dropped)


@register_dataset("compas")
class Compas(TabularFileDataset):
    description = "ProPublica COMPAS (local file): two-year recidivism, after ProPublica's filter"
    citation = ("Angwin, Larson, Mattu & Kirchner (2016), Machine Bias, ProPublica; "
                "github.com/propublica/compas-analysis")
    targets = {"two_year_recid": "re-arrested within two years"}
    default_target = "two_year_recid"
    size_note = ("7,214 rows; 6,172 after ProPublica's filter; 5,278 African-American or Caucasian "
                 "(the default, races=black-white); seeded 60/20/20 split")
    attributes = {
        "race": "African-American / Caucasian (other races dropped, or `other` with races=all)",
        "race6": "the six ProPublica race categories (all six with races=all)",
        "sex": "Female / Male",
        "age_cat": "Less than 25 / 25 - 45 / Greater than 45",
    }
    numeric = NUMERIC
    categorical = CATEGORICAL
    log_scaled = COUNTS  # heavy-tailed counts
    class_names = ["no recidivism", "recidivism"]
    shift_columns = SHIFT_COLUMNS
    attribute_columns = ("race", "sex", "age", "age_cat", "two_year_recid")
    file_candidates = (FILE, f"compas-analysis/{FILE}")
    source_hint = "get it from github.com/propublica/compas-analysis (its licence does not allow shipping it)"

    def __init__(self, root: str | None = None, target: str | None = None, races: str = "black-white", **options: Any):
        super().__init__(root=root, target=target, **options)
        if races not in RACE_CHOICES:
            raise DatasetError(f"compas: unknown races {races!r}; choose one of: {', '.join(RACE_CHOICES)}")
        self.races = races

    def read_rows(self) -> TabularRows:
        path = self.source_file()
        # Empty fields are missing; "N/A" stays text, as in ProPublica's R code (pandas would read it as NaN).
        raw = pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)
        require_columns(raw.columns, REQUIRED, self.name, FILE)
        for column, allowed in (("race", RACES6), ("sex", SEXES), ("age_cat", AGE_CATS), ("two_year_recid", [0, 1]),
                                ("is_recid", [-1, 0, 1]), ("c_charge_degree", ["F", "M", "O"]),
                                ("score_text", ["Low", "Medium", "High", "N/A"])):
            check_values(raw, column, allowed, self.name, FILE)
        for column in ["id", *NUMERIC]:
            raw[column] = numeric_column(raw, column, self.name, FILE)
        raw["days_b_screening_arrest"] = numeric_column(raw, "days_b_screening_arrest", self.name, FILE,
                                                        allow_missing=True)
        if raw["id"].duplicated().any():
            first = int(raw['id'][raw['id'].duplicated()].iloc[0])
            raise DatasetError(f"compas: {FILE}: id {first} appears twice; is it the official file?")

        dropped: dict[str, int] = {}
        df = propublica_filter(raw, dropped)
        notes = [f"ProPublica's filter keeps {len(df)} of {len(raw)} rows "
                 f"(their analysis of the published file: {PROPUBLICA_ROWS})"]
        if self.races == "black-white":
            df = keep_rows(df, df["race"].isin(BLACK_WHITE), "race not African-American or Caucasian", dropped)
        table = pd.DataFrame({
            "sample_id": "id-" + df["id"].astype(np.int64).astype(str),
            "y": df["two_year_recid"].astype(np.int64),
            "race": np.where(df["race"].isin(BLACK_WHITE), df["race"], "other"),
            "race6": df["race"].astype(str),
            "sex": df["sex"].astype(str),
            "age_cat": df["age_cat"].astype(str),
        })
        features = df[NUMERIC + CATEGORICAL].copy()
        features["c_charge_desc"] = features["c_charge_desc"].fillna("missing").astype(str)
        return TabularRows(table=table, features=features, dropped=dropped, notes=notes, domains=self.domains(df))

    def domains(self, df: pd.DataFrame) -> pd.DataFrame | None:
        """The shift columns of the kept rows (the screening year read only when a shift asks for it)."""
        out = pd.DataFrame({"c_charge_degree": df["c_charge_degree"].astype(str)}, index=df.index)
        if any(spec.column == "screening_year" for spec in self.shift_specs):
            require_columns(df.columns, [SCREENING_DATE], self.name, FILE)
            date = pd.to_datetime(df[SCREENING_DATE], format="%Y-%m-%d", errors="coerce")
            bad = date.isna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DatasetError(f"compas: {FILE} line {df.index[i] + 2}: {SCREENING_DATE} is not a date "
                                   f"YYYY-MM-DD ({df[SCREENING_DATE].iloc[i]!r})")
            out["screening_year"] = date.dt.year.astype(str)
        return out
