"""ACS Income on fixture PUMS person files: folktables' filter and target, file layouts, the cache, bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noharm.bench.cli import main
from noharm.datasets import DatasetError, get_dataset
from noharm.datasets.acs_income import CATEGORICAL, NUMERIC, adult_filter
from tests import tabular_layouts as T

REASONS = {"age": "AGEP <= 16", "income": "PINCP <= 100 or missing", "hours": "WKHP 0 or missing",
           "weight": "PWGTP < 1"}
CSV = Path("2018") / "1-Year" / "psam_p06.csv"


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("acs")
    return root, T.write_acs(root)


def load(root, tmp_path, **options):
    ds = get_dataset("acs-income", root=str(root), cache_dir=str(tmp_path / "cache"), **options)
    return ds, ds.load(0)


def sample_ids(frame: pd.DataFrame) -> pd.Series:
    return frame["SERIALNO"].astype(str) + "-" + frame["SPORDER"].astype(str)


def test_filter_target_and_attributes_follow_folktables(fixture, tmp_path):
    root, written = fixture
    _, bundle = load(root, tmp_path)
    t = bundle.table
    ids = set(t["sample_id"])
    for _, row in written.iterrows():
        assert (f"{row['SERIALNO']}-{row['SPORDER']}" in ids) == (row["why"] == ""), row.to_dict()
    assert bundle.dropped == {REASONS[w]: int((written["why"] == w).sum()) for w in REASONS}
    assert bundle.dropped == {"AGEP <= 16": 2, "PINCP <= 100 or missing": 3, "WKHP 0 or missing": 1, "PWGTP < 1": 1}
    kept = written[written["why"] == ""].assign(sample_id=lambda d: sample_ids(d)).set_index("sample_id")
    truth = kept.loc[t["sample_id"]]
    income = pd.to_numeric(truth["PINCP"])
    assert np.array_equal(t["y"].to_numpy(), (income > 50_000).to_numpy().astype(int))
    assert t.loc[income.to_numpy() == 50_000, "y"].tolist() == [0]
    assert t.loc[income.to_numpy() == 50_001, "y"].tolist() == [1]
    assert np.array_equal(t["sex"].to_numpy(), truth["SEX"].map({1: "Male", 2: "Female"}).to_numpy())
    assert np.array_equal(t["race"] == "White", truth["RAC1P"].to_numpy() == 1)
    assert set(t["race9"]) == {"White", "Black", "Asian", "Other", "Two or more"}
    age = truth["AGEP"].to_numpy()
    assert (t["age"].to_numpy()[age == 17] == "17-24").all() and (t["age"].to_numpy()[age >= 65] == "65-plus").all()
    assert set(t["age"]) == {"17-24", "25-44", "45-64", "65-plus"}


def test_folktables_filter_matches_its_definition_on_random_rows():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"AGEP": rng.integers(0, 95, 500), "PINCP": rng.choice([np.nan, -100, 50, 100, 101, 6e4], 500),
                       "WKHP": rng.choice([np.nan, 0, 1, 40], 500), "PWGTP": rng.integers(0, 3, 500)})
    # folktables/acs.py, adult_filter: AGEP > 16, PINCP > 100, WKHP > 0, PWGTP >= 1.
    reference = df[(df["AGEP"] > 16) & (df["PINCP"] > 100) & (df["WKHP"] > 0) & (df["PWGTP"] >= 1)]
    dropped: dict[str, int] = {}
    ours = adult_filter(df, dropped)
    assert ours.index.equals(reference.index) and sum(dropped.values()) == len(df) - len(reference)


def test_features_encode_the_task_columns_fitted_on_train(fixture, tmp_path):
    root, written = fixture
    _, bundle = load(root, tmp_path)
    x, t = bundle.x, bundle.table
    train = t["split"].to_numpy() == "train"
    assert x.dtype == np.float32 and len(x) == len(t)
    assert np.allclose(x[train, :len(NUMERIC)].mean(axis=0), 0, atol=1e-5)
    # Every row has exactly one 1 in each of the eight one-hot blocks, unless its code was unseen in train.
    onehot = x[:, len(NUMERIC):]
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    assert (onehot[train].sum(axis=1) == len(CATEGORICAL)).all()
    # One column per code seen in train (a blank COW is code 0, folktables' postprocess); none has 64 codes here.
    kept = written[written["why"] == ""].assign(sample_id=lambda d: sample_ids(d)).set_index("sample_id")
    truth = kept.loc[t["sample_id"]]
    widths = [pd.to_numeric(truth[c].replace("", 0))[train].nunique() for c in CATEGORICAL]
    assert max(widths) < 64 and x.shape[1] == len(NUMERIC) + sum(widths)


def test_rows_are_cached_and_reused_until_the_file_changes(fixture, tmp_path):
    root = tmp_path / "acs"
    shutil.copytree(fixture[0], root)
    first_ds, first = load(root, tmp_path)
    assert first_ds.table_cache_built is True
    folder = first_ds.table_cache_folder
    assert folder.parent == tmp_path / "cache" / "acs-income" and (folder / "rows.parquet").is_file()
    again_ds, again = load(root, tmp_path)
    assert again_ds.table_cache_built is False and again_ds.table_cache_folder == folder
    assert again.table.equals(first.table) and np.array_equal(again.x, first.x) and again.dropped == first.dropped
    os.utime(root / CSV, ns=(1, 1))  # an edited source gets a new key
    changed_ds, _ = load(root, tmp_path)
    assert changed_ds.table_cache_built is True and changed_ds.table_cache_folder != folder
    state_ds, _ = load(root, tmp_path)
    assert state_ds.table_cache_built is False and state_ds.table_cache_folder == changed_ds.table_cache_folder


def test_layouts_flat_older_years_and_several_states(tmp_path):
    flat = tmp_path / "flat"
    T.write_acs(flat, folktables_layout=False)
    _, bundle = load(flat, tmp_path)
    assert len(bundle.table) == 165
    old = tmp_path / "old"
    T.write_acs(old, year=2016)  # 2014-2016 files are named ssYYpST.csv
    assert (old / "2016" / "1-Year" / "ss16pca.csv").is_file()
    _, bundle16 = load(old, tmp_path, year=2016)
    assert len(bundle16.table) == 165
    two = tmp_path / "two"
    T.write_acs(two, seed=1)
    T.write_acs(two, state="NV", st=32, seed=2)
    _, both = load(two, tmp_path, state="CA,NV")
    assert len(both.table) == 2 * 165 and both.table["sample_id"].str.startswith("2018").all()
    assert both.dropped["AGEP <= 16"] == 4


def test_check_prints_counts_and_the_cache(fixture, tmp_path, capsys):
    root, _ = fixture
    code = main(["datasets", "check", "acs-income", "--root", str(root), "--attribute", "sex+race",
                 "--option", "state=CA", "--option", "year=2018", "--cache-dir", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("acs-income: 165 samples")
    assert "note: CA 2018 1-Year: 165 of 172 person rows kept by folktables' ACSIncome filter" in out
    assert f"note: table cache built: {tmp_path / 'c' / 'acs-income'}" in out


rewrite = T.rewrite_csv


def put(column, value, row=4):
    return T.set_cell(column, value, row)


@pytest.mark.parametrize(
    "edit, options, message",
    [
        (lambda r: (r / CSV).unlink(), {},
         "acs-income: missing {root}/2018/1-Year/psam_p06.csv or {root}/psam_p06.csv (CA 2018 1-Year); download"),
        (lambda r: None, {"year": 2019},
         "acs-income: missing {root}/2019/1-Year/psam_p06.csv or {root}/psam_p06.csv (CA 2019 1-Year)"),
        (lambda r: rewrite(r / CSV, lambda df: df.drop(columns=["RELP"])), {},
         "acs-income: psam_p06.csv lacks column 'RELP'; is it the official file?"),
        (lambda r: rewrite(r / CSV, put("ST", "32")), {},
         "acs-income: psam_p06.csv line 6: ST has unexpected value 32; expected one of 6"),
        (lambda r: rewrite(r / CSV, put("AGEP", "forty")), {},
         "acs-income: psam_p06.csv line 6: AGEP has non-numeric value 'forty'; expected a number"),
        (lambda r: rewrite(r / CSV, put("SEX", "")), {},
         "acs-income: psam_p06.csv line 6: SEX is empty; expected a number"),
        (lambda r: rewrite(r / CSV, put("RAC1P", "12")), {},
         "acs-income: psam_p06.csv line 6: RAC1P has unexpected value 12; expected one of 1, 2, 3"),
    ],
)
def test_bad_input_is_one_clear_line(fixture, tmp_path, capsys, edit, options, message):
    root = tmp_path / "acs"
    shutil.copytree(fixture[0], root)
    edit(root)
    argv = ["datasets", "check", "acs-income", "--root", str(root), "--cache-dir", str(tmp_path / "c")]
    argv += [f"--option={k}={v}" for k, v in options.items()]
    T.assert_one_line_error(lambda: load(root, tmp_path, **options), argv, message.format(root=root), capsys)
    assert not list((tmp_path / "c").glob("acs-income/*/meta.json"))  # nothing half-written looks complete


@pytest.mark.parametrize(
    "options, message",
    [
        ({"state": "XX"}, "acs-income: unknown state 'XX'; use postal codes such as CA or CA,TX"),
        ({"state": "CA,CA"}, "acs-income: state lists 'CA,CA' with a repeat"),
        ({"horizon": "3-Year"}, "acs-income: unknown horizon '3-Year'; choose one of: 1-Year, 5-Year"),
        ({"year": 2010}, "acs-income: year must be between 2014 and 2100, got 2010"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(DatasetError) as err:
        get_dataset("acs-income", root="/tmp", **options)
    assert message in str(err.value)


def test_table_cache_builds_once_under_concurrency_and_clears_stale_builds(tmp_path):
    import threading
    import time

    from noharm.datasets.table_cache import load_or_build_table

    source = tmp_path / "src.csv"
    source.write_text("a\n1\n")
    calls = []

    def build():
        calls.append(1)
        time.sleep(0.5)  # long enough for the other thread to find the lock taken
        return pd.DataFrame({"a": [1, 2, 3]}), {"rule": 4}

    out = []
    threads = [threading.Thread(target=lambda: out.append(
        load_or_build_table([source], {"v": 1}, build, "t", tmp_path / "c"))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and sorted(r.built for r in out) == [False, True]
    assert all(r.rows["a"].tolist() == [1, 2, 3] and r.dropped == {"rule": 4} for r in out)
    # A partial folder left by a killed build of that key is removed by the next build.
    key = out[0].folder.name
    shutil.rmtree(out[0].folder)
    (stale := out[0].folder.parent / f".{key}.partial-killed").mkdir()
    again = load_or_build_table([source], {"v": 1}, build, "t", tmp_path / "c")
    assert again.built and not stale.exists() and len(calls) == 2
