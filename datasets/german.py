"""UCI Statlog German Credit, embedded (see datasets/data/README.md for source, licence and checksum).

`sex` is decoded from attribute 9, "personal status and sex", as the UCI
documentation codes it: A91 male divorced/separated, A92 female
divorced/separated/married, A93 male single, A94 male married/widowed, A95
female single (no row of the file uses A95). That documentation is wrong:
Grömping (2019, "South German Credit Data: Correcting a Widely Used Data Set",
Report 4/2019, Reports in Mathematics, Physics and Chemistry, Beuth University
of Applied Sciences Berlin) recovered the original coding, in which the code
read here as female (A92) is "female non-single or male single", so sex cannot
be recovered from the file and `sex` is not what it claims. It is kept, as
AIF360 and FFB decode it, only to compare with them; `age` is the attribute to
lean on (bench/suites/tabular.yaml searches german on age). `age` is cut at 25
(under-25 / 25-plus), the cut of Kamiran & Calders (2009) and AIF360 (FFB cuts
at > 25). Both attributes stay features too, as in `adult`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.tabular import TabularDataset, TabularRows, embedded_file

# The 20 attributes of german.data in file order (names after the UCI documentation), then the class.
COLUMNS = [
    "status", "duration", "credit_history", "purpose", "credit_amount", "savings", "employment",
    "installment_rate", "personal_status", "other_debtors", "residence_since", "property", "age",
    "installment_plans", "housing", "existing_credits", "job", "people_liable", "telephone",
    "foreign_worker", "credit",
]
NUMERIC = ["duration", "credit_amount", "installment_rate", "residence_since", "age", "existing_credits",
           "people_liable"]
CATEGORICAL = ["status", "credit_history", "purpose", "savings", "employment", "personal_status",
               "other_debtors", "property", "installment_plans", "housing", "job", "telephone", "foreign_worker"]
# Raw coded columns a natural shift may move rows by (`shift=COLUMN:CODE`), codes as german.data writes them.
SHIFT_COLUMNS = {
    "foreign_worker": "A201 yes, A202 no",
    "purpose": "A40 new car, A41 used car, A42 furniture, A43 radio/TV, ..., A410 others",
    "job": "A171 unskilled non-resident, A172 unskilled resident, A173 skilled, A174 management",
    "housing": "A151 rent, A152 own, A153 for free",
    "telephone": "A191 none, A192 yes",
    "property": "A121 real estate, ..., A124 unknown or none",
    "savings": "A61 < 100 DM, ..., A65 unknown or none",
    "status": "checking account: A11 < 0 DM, A12 < 200 DM, A13 >= 200 DM, A14 none",
    "employment": "present employment since: A71 unemployed, ..., A75 >= 7 years",
    "credit_history": "A30 ... A34",
    "other_debtors": "A101 none, A102 co-applicant, A103 guarantor",
    "installment_plans": "A141 bank, A142 stores, A143 none",
}
SEX_OF_STATUS = {"A91": "Male", "A92": "Female", "A93": "Male", "A94": "Male", "A95": "Female"}
EXPECTED_ROWS = 1000
AGE_CUT = 25


def read_raw() -> pd.DataFrame:
    """The shipped german.data as a DataFrame (1,000 rows, 20 attributes and the class, codes as in the file)."""
    with embedded_file("german.data.gz") as p:
        df = pd.read_csv(p, sep=" ", header=None, names=COLUMNS, compression="gzip")
    if len(df) != EXPECTED_ROWS or not df["credit"].isin([1, 2]).all() or not df["personal_status"].isin(
            list(SEX_OF_STATUS)).all():
        raise DatasetError(f"german: the shipped german.data has {len(df)} rows or unknown codes; the file is damaged")
    return df


@register_dataset("german")
class German(TabularDataset):
    description = "UCI Statlog German Credit (embedded): good or bad credit risk from 20 attributes"
    citation = "Hofmann (1994); UCI Machine Learning Repository, doi:10.24432/C5NC77"
    targets = {"credit": "good credit risk (1) vs bad (2 in the file)"}
    default_target = "credit"
    size_note = "1,000 rows (700 good, 300 bad); seeded 60/20/20 split"
    attributes = {
        "sex": "Female / Male, decoded from the personal-status code (A92, A95 female); see the caveat",
        "age": "under-25 / 25-plus",
    }
    caveats = {
        "sex": "not what it claims: the personal-status coding of german.data is documented wrongly, and the "
               "code read as female (A92) also holds single men (Grömping 2019, \"South German Credit Data: "
               "Correcting a Widely Used Data Set\", Beuth University report 4/2019); kept to compare with "
               "AIF360 and FFB, lean on age",
    }
    numeric = NUMERIC
    categorical = CATEGORICAL
    log_scaled = ["credit_amount"]  # heavy-tailed amounts in DM
    class_names = ["bad", "good"]
    # 601 training rows: the methods' default 10 epochs at batch 128 are 50 optimizer steps, after which 12
    # of 22 methods (FairSDE and its variants, decoupled, group-models, ...) predicted one class for a group
    # on some seed; at 30 epochs x batch 32 (570 steps) none does (bench/perf/defaults_check.py, RESULTS.md).
    training_budget = {"epochs": 30, "batch_size": 32}
    shift_columns = SHIFT_COLUMNS
    attribute_columns = ("personal_status", "age", "credit")

    def read_rows(self) -> TabularRows:
        raw = read_raw()
        table = pd.DataFrame({
            "sample_id": "row-" + raw.index.astype(str),
            "y": (raw["credit"] == 1).astype(np.int64),
            "sex": raw["personal_status"].map(SEX_OF_STATUS),
            "age": np.where(raw["age"] < AGE_CUT, f"under-{AGE_CUT}", f"{AGE_CUT}-plus"),
        })
        return TabularRows(table=table, features=raw[NUMERIC + CATEGORICAL], domains=raw[list(SHIFT_COLUMNS)])
