"""UCI Adult census income, embedded (see datasets/data/README.md for source and licence)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.splits import stratified_assign
from noharm.datasets.tabular import TabularDataset, TabularRows, embedded_file

COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
]
NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
# Heavy-tailed money columns are log-scaled before standardising.
LOG_SCALED = ["capital-gain", "capital-loss"]
CATEGORICAL = [
    "workclass", "education", "marital-status", "occupation", "relationship",
    "race", "sex", "native-country",
]
EXPECTED_ROWS = {"adult.data": 32561, "adult.test": 16281}
# Raw columns a natural shift may move rows by (`shift=COLUMN:VALUE`); values as the UCI files write them.
SHIFT_COLUMNS = {
    "workclass": "Private, Self-emp-not-inc, Self-emp-inc, Federal-gov, Local-gov, State-gov, Without-pay",
    "education": "the 16 education levels (Bachelors, HS-grad, ...)",
    "marital-status": "Married-civ-spouse, Never-married, Divorced, ...",
    "occupation": "the 14 occupations (Tech-support, Craft-repair, ...)",
    "relationship": "Husband, Wife, Own-child, Not-in-family, Other-relative, Unmarried",
    "native-country": "the 41 countries (United-States, Mexico, Philippines, ...)",
}


def read_raw(name: str) -> pd.DataFrame:
    """Read one of the shipped UCI files as a DataFrame (no rows dropped)."""
    with embedded_file(f"{name}.gz") as p:
        df = pd.read_csv(
            p, header=None, names=COLUMNS, skipinitialspace=True, na_values="?",
            skiprows=1 if name == "adult.test" else 0, compression="gzip",
        )
    df["income"] = df["income"].str.rstrip(".")
    if len(df) != EXPECTED_ROWS[name]:
        raise DatasetError(f"adult: {name} has {len(df)} rows, expected {EXPECTED_ROWS[name]}; the shipped file is damaged")
    return df


@register_dataset("adult")
class Adult(TabularDataset):
    description = "UCI Adult census income (embedded): income > 50K from 14 census features"
    citation = "Kohavi (1996); UCI Machine Learning Repository, doi:10.24432/C5XW20"
    targets = {"income": "income > 50K (binary)"}
    default_target = "income"
    size_note = "48,842 rows: 32,561 train + 16,281 test (45,222 after dropping 3,620 with missing values)"
    attributes = {
        "sex": "Female / Male",
        "race": "White / non-White",
        "race5": "the five original race categories",
        "age": "under-40 / 40-plus",
    }
    numeric = NUMERIC
    categorical = CATEGORICAL
    log_scaled = LOG_SCALED
    class_names = ["<=50K", ">50K"]
    shift_columns = SHIFT_COLUMNS
    attribute_columns = ("sex", "race", "age", "income")

    def __init__(self, root: str | None = None, target: str | None = None, val_fraction: float = 0.2, **options):
        super().__init__(root=root, target=target, **options)
        if not 0.0 < float(val_fraction) < 1.0:
            raise DatasetError(f"adult: val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)

    def read_rows(self) -> TabularRows:
        train_raw, test_raw = read_raw("adult.data"), read_raw("adult.test")
        raw = pd.concat([train_raw.assign(_official="train"), test_raw.assign(_official="test")], ignore_index=True)
        raw["sample_id"] = np.where(
            raw["_official"] == "train", "train-" + raw.index.astype(str),
            "test-" + (raw.index - len(train_raw)).astype(str),
        )
        n_missing = int(raw[COLUMNS].isna().any(axis=1).sum())
        raw = raw.dropna(subset=COLUMNS).reset_index(drop=True)
        table = pd.DataFrame({
            "sample_id": raw["sample_id"],
            "y": (raw["income"] == ">50K").astype(np.int64),
            "sex": raw["sex"].astype(str),
            "race": np.where(raw["race"] == "White", "White", "non-White"),
            "race5": raw["race"].astype(str),
            "age": np.where(raw["age"] < 40, "under-40", "40-plus"),
        })
        return TabularRows(table=table, features=raw, dropped={"rows with missing values": n_missing},
                           domains=raw[list(SHIFT_COLUMNS)])

    def assign_splits(self, rows: TabularRows, keep: np.ndarray, seed: int) -> np.ndarray:
        """Official test split kept; validation carved from the official train, stratified by every attribute
        jointly and the label."""
        table = rows.table[keep]
        split = np.full(len(table), "test", dtype=object)
        is_train = (rows.features["_official"].to_numpy()[keep] == "train")
        strata = table.loc[is_train, ["sex", "race5", "age", "y"]]
        split[is_train] = stratified_assign(
            strata, (1 - self.val_fraction, self.val_fraction), seed, names=("train", "val")
        )
        return split
