"""Bank Marketing on a fixture in UCI's exact layout (`;`, quoted strings): attributes, duration, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noharm.bench.cli import main
from noharm.datasets import DatasetError, get_dataset
from noharm.datasets.bank import NUMERIC
from tests import tabular_layouts as T

FILE = "bank-additional-full.csv"


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    return root, T.write_bank(root)


def test_rows_labels_and_attributes(fixture):
    root, written = fixture
    bundle = get_dataset("bank", root=str(root)).load(0)
    t = bundle.table
    assert bundle.dropped == {"marital unknown": 2} and len(t) == len(written) - 2
    kept = written[written["why"] == ""].reset_index(drop=True)
    assert t["sample_id"].tolist() == [f"row-{i}" for i in written.index[written["why"] == ""]]
    assert np.array_equal(t["y"].to_numpy(), (kept["y"] == "yes").to_numpy().astype(int))
    assert set(t["marital"]) == {"married", "single", "divorced"}
    by_age = dict(zip(kept["age"], zip(t["age"], t["age_band"])))
    assert by_age[24] == ("under-25", "under-25-or-over-60") and by_age[25] == ("25-plus", "25-60")
    assert by_age[60] == ("25-plus", "25-60") and by_age[61] == ("25-plus", "under-25-or-over-60")
    for _, stratum in t.groupby(["age", "age_band", "marital", "y"]):
        n = len(stratum)
        assert (stratum["split"] == "train").sum() == round(0.6 * n)


def test_duration_is_left_out_unless_asked(fixture, tmp_path):
    root = tmp_path / "bank"
    shutil.copytree(fixture[0], root)
    base = get_dataset("bank", root=str(root)).load(0)
    with_duration = get_dataset("bank", root=str(root), include_duration=True).load(0)
    assert with_duration.x.shape[1] == base.x.shape[1] + 1
    df = pd.read_csv(root / FILE, sep=";")
    df["duration"] = df["duration"] * 7 + 3
    df.to_csv(root / FILE, sep=";", index=False)
    changed = get_dataset("bank", root=str(root)).load(0)
    assert np.array_equal(changed.x, base.x)
    train = base.table["split"].to_numpy() == "train"
    assert np.allclose(base.x[train, :len(NUMERIC)].mean(axis=0), 0, atol=1e-5)


def test_pdays_never_contacted_is_not_a_large_number(fixture):
    root, _ = fixture
    rows = get_dataset("bank", root=str(root)).read_rows()
    pdays = rows.features["pdays"]
    assert pdays.max() < 999 and (pdays == -1).sum() == (rows.features["previous"] == 0).sum()


def test_unzipped_folder_layout_and_check(tmp_path, capsys):
    T.write_bank(tmp_path / "b", subfolder=True)
    assert (tmp_path / "b" / "bank-additional" / FILE).is_file()
    code = main(["datasets", "check", "bank", "--root", str(tmp_path / "b"), "--attribute", "marital"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("bank: 178 samples") and "dropped: marital unknown: 2" in out
    assert "note: bank-additional-full.csv: 180 rows (UCI documents 41188)" in out
    assert "attribute marital:" in out and "divorced" in out


def rewrite(path: Path, fn) -> None:
    T.rewrite_csv(path, fn, sep=";")


def put(column, value, row=2):
    return T.set_cell(column, value, row)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: (r / FILE).unlink(), "bank: missing {root}/bank-additional-full.csv or "
                                       "{root}/bank-additional/bank-additional-full.csv; get bank-additional.zip"),
        (lambda r: rewrite(r / FILE, lambda df: df.drop(columns=["marital"])),
         "bank: bank-additional-full.csv lacks column 'marital'; is it the official file?"),
        (lambda r: rewrite(r / FILE, put("marital", "widowed")),
         "bank: bank-additional-full.csv line 4: marital has unexpected value 'widowed'; expected one of 'married'"),
        (lambda r: rewrite(r / FILE, put("y", "maybe")),
         "bank: bank-additional-full.csv line 4: y has unexpected value 'maybe'; expected one of 'no', 'yes'"),
        (lambda r: rewrite(r / FILE, put("age", "old")),
         "bank: bank-additional-full.csv line 4: age has non-numeric value 'old'; expected a number"),
        (lambda r: rewrite(r / FILE, put("job", "")),
         "bank: bank-additional-full.csv line 4: job is empty"),
        (lambda r: (r / FILE).write_text((r / FILE).read_text().replace(";", ",")),
         "bank: bank-additional-full.csv lacks column 'age'"),
    ],
)
def test_bad_input_is_one_clear_line(fixture, tmp_path, capsys, edit, message):
    root = tmp_path / "bank"
    shutil.copytree(fixture[0], root)
    edit(root)
    T.assert_one_line_error(lambda: get_dataset("bank", root=str(root)).load(0),
                            ["datasets", "check", "bank", "--root", str(root)], message.format(root=root), capsys)


def test_bad_option():
    with pytest.raises(DatasetError, match="bank: include_duration must be true or false, got 'sometimes'"):
        get_dataset("bank", root="/tmp", include_duration="sometimes")
