"""The published reference results (docs/reference-results/, `make reference`) are what a fresh trial gives.

One cell is recomputed from scratch: german, groups by sex, ERM on seed 0, with the settings read from the published
settings table and the budget from the published suite file, and its test metrics compared with the published
per-seed summary.csv. On the CPU model named in the reference's README (its `--stamp` line) the numbers must be equal
bit for bit (same seed, same numbers on CPU); on another CPU, whose kernels may round differently over 30 epochs,
within TOLERANCE (absolute). `NOHARM_REFERENCE_DIR` points the test at another published folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

REFERENCE = Path(os.environ.get("NOHARM_REFERENCE_DIR",
                                Path(__file__).resolve().parents[1] / "docs" / "reference-results"))
CELL = {"dataset": "german", "attribute": "sex", "method": "erm", "seed": 0}
TOLERANCE = 0.02  # another CPU: a one-sample difference on german's 200 test rows is 0.005 in accuracy
METRICS = ("acc", "acc_worst", "acc_gap", "auc", "auc_worst", "auc_gap", "dp_diff", "eopp_diff", "eodds_diff", "ece")


def _published():
    if not (REFERENCE / "summary.csv").is_file():
        pytest.skip(f"no published reference results in {REFERENCE} (make them with `make reference`)")
    return (pd.read_csv(REFERENCE / "summary.csv"), pd.read_csv(REFERENCE / "tables" / "settings.csv", comment="#"),
            (REFERENCE / "README.md").read_text())


def test_a_fresh_trial_reproduces_a_published_cell():
    from noharm.analysis.report import machine_stamp
    from noharm.bench.sweep import grid
    from noharm.bench.sweep.suite import load_suite
    from noharm.bench.trial import run_trial

    summary, settings, readme = _published()
    suite = load_suite(REFERENCE / "suite.yaml")
    cell = next(c for c in grid.cells(suite) if (c.dataset, c.attribute, c.method) ==
                (CELL["dataset"], CELL["attribute"], CELL["method"]))
    rows = settings[(settings["dataset"] == CELL["dataset"]) & (settings["attribute"] == CELL["attribute"])
                    & (settings["method"] == CELL["method"])]
    chosen = {r.param: str(r.value) for r in rows.itertuples() if not r.param.startswith("(")}
    assert chosen, "the published settings table names no searched setting of the cell"
    result = run_trial(grid.trial_spec(suite, cell, chosen, CELL["seed"]), device="cpu")
    want = summary[(summary["dataset"] == CELL["dataset"]) & (summary["attribute"] == CELL["attribute"])
                   & (summary["entry"] == CELL["method"]) & (summary["seed"] == CELL["seed"])]
    assert len(want) == 1
    want = want.iloc[0]
    got = {m: result.metrics[f"test/model/{m.replace('_worst', '/worst').replace('_gap', '/gap')}"] for m in METRICS}
    cpu = machine_stamp().split("; ")[1]
    stamp = re.search(r"^Generated [^;]+; ([^;]+);", readme, re.M)
    if stamp is not None and stamp.group(1) == cpu:
        assert got == {m: float(want[m]) for m in METRICS}  # bit for bit
    else:
        assert got == pytest.approx({m: float(want[m]) for m in METRICS}, abs=TOLERANCE)
