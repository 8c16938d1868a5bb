"""Fixture generators: small copies of the tabular datasets in their publishers' exact file layouts.

Each `write_<dataset>(root, ...)` writes the file as the publisher ships it
(column names, order, codings, quoting, blanks) and returns the rows it wrote
as a DataFrame with a `why` column saying which rule, if any, must drop the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

# ---------------------------------------------------------------- ProPublica COMPAS
# The header of compas-scores-two-years.csv, verbatim: `decile_score` and `priors_count` appear twice.
COMPAS_HEADER = (
    "id,name,first,last,compas_screening_date,sex,dob,age,age_cat,race,juv_fel_count,decile_score,juv_misd_count,"
    "juv_other_count,priors_count,days_b_screening_arrest,c_jail_in,c_jail_out,c_case_number,c_offense_date,"
    "c_arrest_date,c_days_from_compas,c_charge_degree,c_charge_desc,is_recid,r_case_number,r_charge_degree,"
    "r_days_from_arrest,r_offense_date,r_charge_desc,r_jail_in,r_jail_out,violent_recid,is_violent_recid,"
    "vr_case_number,vr_charge_degree,vr_offense_date,vr_charge_desc,type_of_assessment,decile_score,score_text,"
    "screening_date,v_type_of_assessment,v_decile_score,v_score_text,v_screening_date,in_custody,out_custody,"
    "priors_count,start,end,event,two_year_recid"
).split(",")
COMPAS_AGE_CAT = {"Less than 25": 22, "25 - 45": 33, "Greater than 45": 52}
COMPAS_CHARGES = ["Battery", "Grand Theft in the 3rd Degree", "Possession of Cocaine", "Driving While License Revoked"]


def _compas_row(i: int, race: str, sex: str, age_cat: str, recid: int, rng: np.random.Generator, **over) -> dict:
    decile = int(rng.integers(1, 11))
    age = COMPAS_AGE_CAT[age_cat] + int(rng.integers(0, 3))
    priors = int(rng.integers(0, 6))
    row = {
        "id": i, "name": f"first{i} last{i}", "first": f"first{i}", "last": f"last{i}",
        "compas_screening_date": "2013-08-14", "sex": sex, "dob": f"{2013 - age}-04-18", "age": age,
        "age_cat": age_cat, "race": race, "juv_fel_count": int(rng.integers(0, 2)), "decile_score": decile,
        "juv_misd_count": 0, "juv_other_count": int(rng.integers(0, 2)), "priors_count": priors,
        "days_b_screening_arrest": int(rng.integers(-3, 2)), "c_jail_in": "2013-08-13 06:03:42",
        "c_jail_out": "2013-08-14 05:41:20", "c_case_number": f"13{i:06d}CF10A", "c_offense_date": "2013-08-13",
        "c_arrest_date": "", "c_days_from_compas": 1, "c_charge_degree": "F" if i % 3 else "M",
        "c_charge_desc": COMPAS_CHARGES[i % len(COMPAS_CHARGES)] if i % 17 else "", "is_recid": recid,
        "r_case_number": f"14{i:06d}MM10A" if recid else "", "r_charge_degree": "(M1)" if recid else "",
        "r_days_from_arrest": "", "r_offense_date": "2014-07-05" if recid else "",
        "r_charge_desc": "Battery" if recid else "", "r_jail_in": "", "r_jail_out": "", "violent_recid": "",
        "is_violent_recid": 0, "vr_case_number": "", "vr_charge_degree": "", "vr_offense_date": "",
        "vr_charge_desc": "", "type_of_assessment": "Risk of Recidivism", "decile_score.1": decile,
        "score_text": "Low" if decile < 5 else ("Medium" if decile < 8 else "High"), "screening_date": "2013-08-14",
        "v_type_of_assessment": "Risk of Violence", "v_decile_score": max(1, decile - 2),
        "v_score_text": "Low", "v_screening_date": "2013-08-14", "in_custody": "2014-07-07",
        "out_custody": "2014-07-14", "priors_count.1": priors, "start": 0, "end": 327, "event": recid,
        "two_year_recid": recid, "why": "",
    }
    row.update(over)
    return row


def write_compas(root: Path, per_stratum: int = 4, seed: int = 0) -> pd.DataFrame:
    """compas-scores-two-years.csv: rows every filter keeps, plus rows each ProPublica rule must drop.

    Kept: `per_stratum` rows for each (African-American or Caucasian) x sex x age_cat x label, and two rows
    of each other race. Dropped, one rule each (`why`): days 31, -31 and blank; a row failing days (45) and
    is_recid (-1), counted once under days; is_recid -1; charge degree O; score_text N/A.
    """
    rng = np.random.default_rng(seed)
    rows, i = [], 1
    for race in ("African-American", "Caucasian"):
        for sex in ("Female", "Male"):
            for age_cat in COMPAS_AGE_CAT:
                for recid in (0, 1):
                    for _ in range(per_stratum):
                        rows.append(_compas_row(i, race, sex, age_cat, recid, rng))
                        i += 1
    rows[0]["days_b_screening_arrest"] = 30  # the bounds are inside the window
    rows[1]["days_b_screening_arrest"] = -30
    for race in ("Hispanic", "Other", "Asian", "Native American"):
        for k in range(2):
            rows.append(_compas_row(i, race, "Male", "25 - 45", k, rng, why="race"))
            i += 1
    for why, over in (
        ("days", {"days_b_screening_arrest": 31}),
        ("days", {"days_b_screening_arrest": -31}),
        ("days", {"days_b_screening_arrest": ""}),
        ("days", {"days_b_screening_arrest": 45, "is_recid": -1}),
        ("is_recid", {"is_recid": -1}),
        ("charge", {"c_charge_degree": "O", "c_charge_desc": "Traffic Offense"}),
        ("score", {"score_text": "N/A", "decile_score": -1, "decile_score.1": -1}),
    ):
        rows.append(_compas_row(i, "African-American", "Male", "25 - 45", 1, rng, why=why, **over))
        i += 1
    # The published file is sorted by id; keep the targeted rows spread among the others.
    order = np.random.default_rng(seed + 1).permutation(len(rows))
    rows = [rows[k] for k in order]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "compas-scores-two-years.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COMPAS_HEADER)
        keys = [k for k in rows[0] if k != "why"]
        for r in rows:
            w.writerow([r[k] for k in keys])
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- ACS PUMS person file
# The columns ACSIncome reads, in the order of the Census person file, with some of their neighbours
# (the real file has about 290 columns; blanks are N/A).
ACS_HEADER = [
    "RT", "SERIALNO", "DIVISION", "SPORDER", "PUMA", "REGION", "ST", "ADJINC", "PWGTP", "AGEP", "CIT", "COW",
    "DEAR", "ENG", "HINS1", "INTP", "JWMNP", "MAR", "MIG", "MIL", "RELP", "SCHL", "SEX", "WAGP", "WKHP", "ESR",
    "NAICSP", "OCCP", "PINCP", "POBP", "RAC1P", "SOCP", "PWGTP1", "PWGTP2",
]


def _acs_row(serial: str, sporder: int, st: int, rng: np.random.Generator, **over) -> dict:
    age = int(rng.integers(17, 90))
    income = int(rng.choice([rng.integers(101, 50_000), rng.integers(50_001, 250_000)]))
    row = {
        "RT": "P", "SERIALNO": serial, "DIVISION": 9, "SPORDER": sporder, "PUMA": f"{3700 + sporder:05d}",
        "REGION": 4, "ST": f"{st:02d}", "ADJINC": 1013097, "PWGTP": int(rng.integers(1, 300)), "AGEP": age,
        "CIT": 1, "COW": int(rng.integers(1, 9)), "DEAR": 2, "ENG": "", "HINS1": 1, "INTP": 0,
        "JWMNP": int(rng.integers(5, 60)), "MAR": int(rng.integers(1, 6)), "MIG": 1, "MIL": 4,
        "RELP": int(rng.integers(0, 18)), "SCHL": int(rng.integers(1, 25)), "SEX": int(rng.integers(1, 3)),
        "WAGP": income, "WKHP": int(rng.integers(1, 80)), "ESR": 1, "NAICSP": "6111",
        "OCCP": f"{int(rng.choice([10, 2310, 4720, 5240, 9130])):04d}", "PINCP": income,
        "POBP": int(rng.choice([6, 36, 210, 303])), "RAC1P": int(rng.choice([1, 1, 2, 6, 8, 9])),
        "SOCP": "41201X", "PWGTP1": 50, "PWGTP2": 60, "why": "",
    }
    row.update(over)
    return row


def write_acs(root: Path, state: str = "CA", st: int = 6, year: int = 2018, n: int = 160, seed: int = 0,
              folktables_layout: bool = True) -> pd.DataFrame:
    """A person CSV (`psam_pSS.csv`) of `n` working adults plus rows each ACSIncome filter rule must drop.

    Written at `<root>/<year>/1-Year/` (folktables' layout) or directly in `root`. Dropped (`why`): age 16 and
    a child with blank income; income 100, blank and negative; hours blank; weight 0. Kept at the edges:
    age 17, income 101, income exactly 50,000 (label 0) and 50,001 (label 1), a blank COW.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        serial = f"{year}{'HU' if k % 5 else 'GQ'}{st * 100_000 + 1000 + k // 2:07d}"
        rows.append(_acs_row(serial, 1 + k % 2, st, rng))
    extra = [
        ("", {"AGEP": 17}), ("", {"PINCP": 101, "WAGP": 101}), ("", {"PINCP": 50_000}), ("", {"PINCP": 50_001}),
        ("", {"COW": ""}),
        ("age", {"AGEP": 16}), ("age", {"AGEP": 9, "PINCP": "", "WKHP": "", "COW": "", "SCHL": 6, "ESR": ""}),
        ("income", {"PINCP": 100}), ("income", {"PINCP": ""}), ("income", {"PINCP": -5000}),
        ("hours", {"WKHP": ""}), ("weight", {"PWGTP": 0}),
    ]
    for j, (why, over) in enumerate(extra):
        rows.append(_acs_row(f"{year}HU{st * 100_000 + 9000 + j:07d}", 1, st, rng, why=why, **over))
    folder = root / str(year) / "1-Year" if folktables_layout else root
    folder.mkdir(parents=True, exist_ok=True)
    name = f"psam_p{st:02d}.csv" if year >= 2017 else f"ss{str(year)[-2:]}p{state.lower()}.csv"
    with open(folder / name, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(ACS_HEADER)
        for r in rows:
            w.writerow([r[k] for k in ACS_HEADER])
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- UCI Bank Marketing
BANK_HEADER = [
    "age", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
    "duration", "campaign", "pdays", "previous", "poutcome", "emp.var.rate", "cons.price.idx", "cons.conf.idx",
    "euribor3m", "nr.employed", "y",
]
BANK_JOBS = ["admin.", "blue-collar", "technician", "services", "management", "retired", "student", "unknown"]
BANK_EDUCATION = ["basic.4y", "high.school", "university.degree", "professional.course", "unknown"]


def write_bank(root: Path, n: int = 180, seed: int = 0, subfolder: bool = False) -> pd.DataFrame:
    """bank-additional-full.csv: `;`-separated, strings and header quoted, numbers bare, as UCI ships it.

    Ages cover the cuts (24, 25, 60, 61 appear); two rows have marital "unknown" (`why`: marital).
    """
    rng = np.random.default_rng(seed)
    ages = np.r_[[24, 25, 60, 61], rng.integers(18, 90, n - 4)]
    rows = []
    for k, age in enumerate(ages):
        previous = int(rng.integers(0, 3))
        rows.append({
            "age": int(age), "job": BANK_JOBS[k % len(BANK_JOBS)], "marital": ["married", "single", "divorced"][k % 3],
            "education": BANK_EDUCATION[k % len(BANK_EDUCATION)], "default": ["no", "unknown"][k % 2],
            "housing": ["yes", "no", "unknown"][k % 3], "loan": ["no", "yes"][k % 2],
            "contact": ["telephone", "cellular"][k % 2], "month": ["may", "jun", "nov"][k % 3],
            "day_of_week": ["mon", "tue", "wed", "thu", "fri"][k % 5], "duration": int(rng.integers(0, 1000)),
            "campaign": int(rng.integers(1, 6)), "pdays": 999 if previous == 0 else int(rng.integers(0, 20)),
            "previous": previous, "poutcome": "nonexistent" if previous == 0 else "failure",
            "emp.var.rate": float(rng.choice([1.1, -1.8, 1.4])), "cons.price.idx": 93.994,
            "cons.conf.idx": -36.4, "euribor3m": float(rng.choice([4.857, 1.313])), "nr.employed": 5191.0,
            "y": "yes" if rng.random() < 0.3 else "no", "why": "",
        })
    for k in (7, 40):
        rows[k]["marital"], rows[k]["why"] = "unknown", "marital"
    folder = root / "bank-additional" if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "bank-additional-full.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";", quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        w.writerow(BANK_HEADER)
        for r in rows:
            w.writerow([r[k] for k in BANK_HEADER])
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- editing copies, checking errors
def rewrite_csv(path: Path, fn, sep: str = ",") -> None:
    """Rewrite a CSV through `fn(DataFrame of strings) -> DataFrame` (unique column names only)."""
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, sep=sep, index=False)


def set_cell(column: str, value: str, row: int):
    """An edit for `rewrite_csv`: one cell replaced."""
    def fn(df):
        df.loc[row, column] = value
        return df
    return fn


def assert_one_line_error(load, check_argv: list[str], expected: str, capsys) -> None:
    """`load()` raises one DatasetError line containing `expected`; `noharm <check_argv>` exits 2 printing it."""
    import pytest

    from noharm.bench.cli import main
    from noharm.datasets import DatasetError

    with pytest.raises(DatasetError) as err:
        load()
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert main(check_argv) == 2
    err_out = capsys.readouterr().err
    assert expected in err_out and err_out.count("\n") == 1
