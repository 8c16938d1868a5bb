"""Row counts on the publishers' real files against the numbers they document (opt-in).

Set NOHARM_TABULAR_DATA to a folder laid out like a suite's --data-root
(`compas/compas-scores-two-years.csv`, `bank/bank-additional-full.csv`,
`acs-income/2018/1-Year/psam_p06.csv`); the parts whose file is absent are skipped.
The files are never shipped, so these tests do not run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from noharm.datasets import get_dataset

ROOT = Path(os.environ.get("NOHARM_TABULAR_DATA", "/nonexistent-noharm-tabular-data"))


def needs(relative: str) -> Path:
    path = ROOT / relative
    if not path.is_file():
        pytest.skip(f"{path} not present (set NOHARM_TABULAR_DATA)")
    return path


def test_compas_matches_propublica_counts():
    needs("compas/compas-scores-two-years.csv")
    bundle = get_dataset("compas", root=str(ROOT / "compas"), races="all").load(0)
    t = bundle.table
    # ProPublica's notebook: 7,214 rows, 6,172 after the filter, then these breakdowns.
    assert len(t) == 6172 and sum(bundle.dropped.values()) == 7214 - 6172
    assert t["race6"].value_counts().to_dict() == {"African-American": 3175, "Caucasian": 2103, "Hispanic": 509,
                                                   "Other": 343, "Asian": 31, "Native American": 11}
    assert t["sex"].value_counts().to_dict() == {"Male": 4997, "Female": 1175}
    assert t["age_cat"].value_counts().to_dict() == {"25 - 45": 3532, "Less than 25": 1347, "Greater than 45": 1293}
    assert int(t["y"].sum()) == 2809
    default = get_dataset("compas", root=str(ROOT / "compas")).load(0)
    assert len(default.table) == 3175 + 2103


def test_bank_matches_the_uci_row_count():
    needs("bank/bank-additional-full.csv")
    rows = get_dataset("bank", root=str(ROOT / "bank")).read_rows()
    assert len(rows.table) + sum(rows.dropped.values()) == 41188  # UCI: 41,188 instances


def test_acs_income_california_2018_matches_folktables(tmp_path):
    needs("acs-income/2018/1-Year/psam_p06.csv")
    ds = get_dataset("acs-income", root=str(ROOT / "acs-income"), state="CA", year=2018, cache_dir=str(tmp_path))
    assert len(ds.read_rows().table) == 195665  # folktables' paper, ACSIncome, CA 2018 1-Year
