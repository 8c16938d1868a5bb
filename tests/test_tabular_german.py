"""German credit, embedded: the shipped file is UCI's, attributes decode as documented, splits and encoding."""

from __future__ import annotations

import gzip
import hashlib
import math

import numpy as np
import pandas as pd
import pytest

from noharm.bench.cli import main
from noharm.bench.trial import TrialConfig, run_trial
from noharm.datasets import get_dataset
from noharm.datasets.german import NUMERIC, read_raw
from noharm.datasets.tabular import embedded_file

# MD5 of the uncompressed german.data (datasets/data/README.md).
GERMAN_MD5 = "6b94c2e35480e671545e52a808a8a549"


@pytest.fixture(scope="module")
def german0():
    return get_dataset("german").load(0)


def test_shipped_file_is_the_uci_original():
    with embedded_file("german.data.gz") as p:
        data = gzip.decompress(p.read_bytes())
    assert hashlib.md5(data).hexdigest() == GERMAN_MD5
    lines = data.decode("ascii").splitlines()
    assert len(lines) == 1000 and all(len(line.split(" ")) == 21 for line in lines)
    # UCI's first record, verbatim.
    assert lines[0] == "A11 6 A34 A43 1169 A65 A75 4 A93 A101 4 A121 67 A143 A152 2 A173 1 A192 A201 1"
    raw = read_raw()
    assert raw["credit"].value_counts().to_dict() == {1: 700, 2: 300}  # UCI: 700 good, 300 bad
    assert raw["personal_status"].value_counts().to_dict() == {"A93": 548, "A92": 310, "A94": 92, "A91": 50}
    assert (raw["age"].min(), raw["age"].max()) == (19, 75)


def test_attributes_decode_the_documented_codes(german0):
    t = german0.table
    raw = read_raw()
    assert len(t) == 1000 and german0.dropped == {}
    assert t["sex"].value_counts().to_dict() == {"Male": 690, "Female": 310}
    assert (t["sex"] == "Female").equals(raw["personal_status"].isin(["A92", "A95"]))
    assert t["age"].value_counts().to_dict() == {"25-plus": 851, "under-25": 149}
    assert (t["age"] == "under-25").equals(raw["age"] < 25)
    assert int(t["y"].sum()) == 700 and german0.class_names == ["bad", "good"]
    assert t["sample_id"].is_unique


def test_split_is_stratified_by_group_and_label_and_seeded(german0):
    t = german0.table
    for _, stratum in t.groupby(["sex", "age", "y"]):
        n = len(stratum)
        counts = stratum["split"].value_counts()
        assert counts.get("train", 0) == round(0.6 * n)
        assert counts.get("train", 0) + counts.get("val", 0) == round(0.8 * n)
    again, other = get_dataset("german").load(0), get_dataset("german").load(1)
    assert again.table["split"].equals(t["split"]) and np.array_equal(again.x, german0.x)
    assert not other.table["split"].equals(t["split"])


def test_encoder_is_fitted_on_train_rows_only(german0):
    raw = read_raw()
    train = german0.table["split"].to_numpy() == "train"
    x = german0.x
    assert x.dtype == np.float32 and x.shape[0] == 1000
    assert np.allclose(x[train, :len(NUMERIC)].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(x[train, :len(NUMERIC)].std(axis=0), 1, atol=1e-4)
    assert not np.allclose(x[:, :len(NUMERIC)].mean(axis=0), 0, atol=1e-3)
    # credit_amount (column 1) is log-scaled, then standardised with the train rows' mean and sd.
    amount = np.log1p(raw["credit_amount"].to_numpy(float))
    expected = (amount - amount[train].mean()) / amount[train].std()
    assert np.allclose(x[:, 1], expected, atol=1e-4)
    # One-hot blocks: each categorical contributes exactly one 1 per row (every code occurs in train here).
    assert np.allclose(x[:, len(NUMERIC):].sum(axis=1), 13)


def test_trial_runs_without_a_data_folder(tmp_path, capsys):
    code = main(["trial", "--dataset", "german", "--attribute", "sex+age", "--method", "erm", "--set", "epochs=2",
                 "--quiet", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Female x under-25" in out and "test accuracy" in out
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    # 8 (sex, age, label) strata cut at round(0.6 n) and round(0.8 n): 601 train, 198 val, 201 test.
    # Validation and test rows only (the 601 training rows are not scored by default).
    assert len(preds) == 399 and preds["split"].value_counts().to_dict() == {"val": 198, "test": 201}
    res = run_trial(TrialConfig(dataset="german", attribute="age", method="erm", seed=0, hparams={"epochs": 2}),
                    device="cpu")
    for key in ("test/model/acc", "test/model/acc/group:under-25", "test/model/auc/group:25-plus"):
        assert math.isfinite(res.metrics[key]) and 0 <= res.metrics[key] <= 1, key
