"""UCI Bank Marketing (`bank-additional-full.csv`, Moro et al. 2014), read from `--data-root`, never shipped.

The file as UCI ships it: 41,188 rows, `;`-separated, strings quoted, 20
inputs and `y` (subscribed a term deposit). Missing categorical values are the
category "unknown", kept as a category of the features; rows whose `marital`
is "unknown" are dropped (counted) because `marital` is a sensitive attribute.

Attributes: `age` under-25 / 25-plus, FFB's cut (its loader: `age >= 25`);
`age_band` 25-60 / under-25-or-over-60, the grouping of Le Quy et al.'s survey
of fairness data sets; `marital` married / single / divorced (divorced
includes widowed, as UCI codes it).

Features: every input but `duration`, which UCI's documentation says to
discard for a realistic model (the call's length is known only after the call,
and duration 0 means y = no); `--option include_duration=true` keeps it (FFB
keeps it). `pdays` 999 (never contacted) becomes -1 before scaling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.image_dataset import bool_option
from noharm.datasets.tabular import (
    TabularFileDataset,
    TabularRows,
    check_values,
    keep_rows,
    numeric_column,
    require_columns,
)

FILE = "bank-additional-full.csv"
NUMERIC = ["age", "campaign", "pdays", "previous", "emp.var.rate", "cons.price.idx", "cons.conf.idx",
           "euribor3m", "nr.employed"]
CATEGORICAL = ["job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
               "poutcome"]
REQUIRED = [*NUMERIC, "duration", *CATEGORICAL, "y"]
MARITAL = ["married", "single", "divorced", "unknown"]
NEVER_CONTACTED = 999  # pdays code for "not previously contacted"
UCI_ROWS = 41188
# Columns a natural shift may move rows by (`shift=COLUMN:VALUE`), values as the file writes them.
SHIFT_COLUMNS = {
    "job": "admin., blue-collar, technician, services, management, retired, ..., unknown",
    "education": "basic.4y, basic.6y, basic.9y, high.school, professional.course, university.degree, ...",
    "default": "no, yes, unknown", "housing": "no, yes, unknown", "loan": "no, yes, unknown",
    "contact": "cellular, telephone",
    "month": "the month of the last contact: mar ... dec",
    "day_of_week": "mon ... fri",
    "poutcome": "failure, nonexistent, success",
}


@register_dataset("bank")
class Bank(TabularFileDataset):
    description = "UCI Bank Marketing (local file): term-deposit subscription after a phone campaign"
    citation = ("Moro, Cortez & Rita (2014), Decision Support Systems; UCI Machine Learning Repository, "
                "doi:10.24432/C5K306")
    targets = {"y": "subscribed a term deposit"}
    default_target = "y"
    size_note = "41,188 rows (80 with marital unknown dropped); seeded 60/20/20 split"
    attributes = {
        "age": "under-25 / 25-plus (FFB)",
        "age_band": "25-60 / under-25-or-over-60",
        "marital": "married / single / divorced",
    }
    numeric = NUMERIC
    categorical = CATEGORICAL
    class_names = ["no", "yes"]
    shift_columns = SHIFT_COLUMNS
    attribute_columns = ("age", "marital", "y")
    file_candidates = (FILE, f"bank-additional/{FILE}")
    source_hint = "get bank-additional.zip from archive.ics.uci.edu/dataset/222/bank+marketing and unzip it there"

    def __init__(self, root: str | None = None, target: str | None = None, include_duration: Any = False,
                 **options: Any):
        super().__init__(root=root, target=target, **options)
        self.include_duration = bool_option(self.name, "include_duration", include_duration)

    def feature_columns(self) -> tuple[list[str], list[str]]:
        return NUMERIC + (["duration"] if self.include_duration else []), list(CATEGORICAL)

    def read_rows(self) -> TabularRows:
        raw = pd.read_csv(self.source_file(), sep=";", keep_default_na=False, na_values=[""], low_memory=False)
        require_columns(raw.columns, REQUIRED, self.name, FILE)
        for column in [*NUMERIC, "duration"]:
            raw[column] = numeric_column(raw, column, self.name, FILE)
        check_values(raw, "y", ["no", "yes"], self.name, FILE)
        check_values(raw, "marital", MARITAL, self.name, FILE)
        for column in CATEGORICAL:
            check_values(raw, column, raw[column].dropna().unique(), self.name, FILE)  # no empty field
        notes = [f"{FILE}: {len(raw)} rows (UCI documents {UCI_ROWS})"]
        dropped: dict[str, int] = {}
        df = keep_rows(raw, raw["marital"] != "unknown", "marital unknown", dropped).reset_index(drop=True)
        age = df["age"]
        table = pd.DataFrame({
            "sample_id": "row-" + pd.Series(np.flatnonzero(raw["marital"] != "unknown")).astype(str),
            "y": (df["y"] == "yes").astype(np.int64),
            "age": np.where(age >= 25, "25-plus", "under-25"),
            "age_band": np.where((age >= 25) & (age <= 60), "25-60", "under-25-or-over-60"),
            "marital": df["marital"].astype(str),
        })
        features = df[NUMERIC + ["duration"] + CATEGORICAL].copy()
        features["pdays"] = features["pdays"].where(features["pdays"] != NEVER_CONTACTED, -1)
        return TabularRows(table=table, features=features, dropped=dropped, notes=notes,
                           domains=df[list(SHIFT_COLUMNS)].astype(str))
