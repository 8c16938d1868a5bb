"""COMPAS on a fixture in ProPublica's exact layout: the filter rule by rule, attributes, what is never a feature."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from noharm.bench.cli import main
from noharm.datasets import DatasetError, get_dataset
from noharm.datasets.check import check_dataset
from tests import tabular_layouts as T

FILE = "compas-scores-two-years.csv"
REASONS = {
    "days": "days_b_screening_arrest missing or outside [-30, 30]",
    "is_recid": "is_recid = -1 (no COMPAS case found)",
    "charge": "c_charge_degree O (ordinary traffic offence)",
    "score": "score_text N/A",
    "race": "race not African-American or Caucasian",
}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("compas")
    return root, T.write_compas(root)


def edit_rows(path: Path, fn) -> None:
    """Rewrite the CSV keeping its exact header (duplicate names included): fn(header, rows) -> (header, rows)."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header, rows = fn(lines[0], lines[1:])
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def copy(fixture, tmp_path) -> Path:
    root = tmp_path / "compas"
    shutil.copytree(fixture[0], root)
    return root


def test_each_propublica_rule_drops_its_rows_and_counts_them(fixture):
    root, written = fixture
    bundle = get_dataset("compas", root=str(root)).load(0)
    ids = set(bundle.table["sample_id"])
    for _, row in written.iterrows():
        assert (f"id-{row['id']}" in ids) == (row["why"] == ""), (row["id"], row["why"])
    # Each row counted once, under the first rule it fails: the row with days 45 and is_recid -1 counts as days.
    expected = {REASONS[w]: int((written["why"] == w).sum()) for w in ("days", "is_recid", "charge", "score", "race")}
    assert bundle.dropped == expected
    assert list(bundle.dropped) == list(expected)  # reported in ProPublica's order
    assert expected[REASONS["days"]] == 4 and expected[REASONS["race"]] == 8
    kept = written[written["why"] == ""]
    assert {30, -30} <= set(kept["days_b_screening_arrest"])  # the window's bounds are inside it
    assert len(bundle.table) == len(kept) == 96


def test_labels_and_attributes(fixture):
    root, written = fixture
    t = get_dataset("compas", root=str(root)).load(0).table
    truth = written.assign(sample_id="id-" + written["id"].astype(str)).set_index("sample_id").loc[t["sample_id"]]
    assert np.array_equal(t["y"].to_numpy(), truth["two_year_recid"].to_numpy())
    assert np.array_equal(t["sex"].to_numpy(), truth["sex"].to_numpy())
    assert np.array_equal(t["age_cat"].to_numpy(), truth["age_cat"].to_numpy())
    assert set(t["race"]) == set(t["race6"]) == {"African-American", "Caucasian"}
    for _, stratum in t.groupby(["race", "sex", "age_cat", "y"]):
        assert stratum["split"].value_counts().to_dict() == {"train": 2, "val": 1, "test": 1}


def test_all_races_keeps_the_other_races(fixture):
    root, written = fixture
    bundle = get_dataset("compas", root=str(root), races="all").load(0)
    t = bundle.table
    assert REASONS["race"] not in bundle.dropped and len(t) == 104
    assert set(t["race6"]) == {"African-American", "Caucasian", "Hispanic", "Other", "Asian", "Native American"}
    assert (t["race"] == "other").sum() == 8
    assert set(t.loc[t["race"] == "other", "race6"]) == {"Hispanic", "Other", "Asian", "Native American"}


def test_scores_and_outcomes_are_never_features(fixture, tmp_path):
    root = copy(fixture, tmp_path)
    before = get_dataset("compas", root=str(root)).load(0)

    def scramble(header, rows):
        cols = {name: [i for i, h in enumerate(header) if h == name] for name in set(header)}
        for r in rows:
            if r[cols["score_text"][0]] == "N/A" or r[cols["is_recid"][0]] == "-1":
                continue  # keep which rows the filter drops
            for i in cols["decile_score"] + cols["v_decile_score"]:
                r[i] = str(11 - int(r[i]))
            r[cols["score_text"][0]] = {"Low": "High", "Medium": "Low", "High": "Medium"}[r[cols["score_text"][0]]]
            r[cols["v_score_text"][0]] = "High"
            r[cols["is_recid"][0]] = str(1 - int(r[cols["is_recid"][0]]))
            r[cols["r_charge_desc"][0]] = "Murder"
        return header, rows

    edit_rows(root / FILE, scramble)
    after = get_dataset("compas", root=str(root)).load(0)
    assert after.table.equals(before.table)
    assert np.array_equal(after.x, before.x)


def test_check_reports_the_filter_count(fixture, capsys):
    root, _ = fixture
    code = main(["datasets", "check", "compas", "--data-root", str(root), "--attribute", "race+sex"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("compas: 96 samples, input ")
    assert "note: ProPublica's filter keeps 104 of 111 rows (their analysis of the published file: 6172)" in out
    assert ("dropped: days_b_screening_arrest missing or outside [-30, 30]: 4; is_recid = -1 (no COMPAS case "
            "found): 1; c_charge_degree O (ordinary traffic offence): 1; score_text N/A: 1; race not "
            "African-American or Caucasian: 8") in out
    report = check_dataset("compas", root=str(root), options={"races": "all"})
    assert report.n_samples == 104 and report.dropped[REASONS["days"]] == 4


def drop_column(name):
    def fn(header, rows):
        j = header.index(name)
        return header[:j] + header[j + 1:], [r[:j] + r[j + 1:] for r in rows]
    return fn


def set_value(name, value, row=3):
    def fn(header, rows):
        rows[row][header.index(name)] = value
        return header, rows
    return fn


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda root: (root / FILE).unlink(), "compas: missing {root}/compas-scores-two-years.csv or "
                                             "{root}/compas-analysis/compas-scores-two-years.csv; get it from"),
        (lambda root: edit_rows(root / FILE, drop_column("two_year_recid")),
         "compas: compas-scores-two-years.csv lacks column 'two_year_recid'; is it the official file?"),
        (lambda root: edit_rows(root / FILE, set_value("race", "Martian")),
         "compas: compas-scores-two-years.csv line 5: race has unexpected value 'Martian'; expected one of "
         "'African-American', 'Asian'"),
        (lambda root: edit_rows(root / FILE, set_value("sex", "")),
         "compas: compas-scores-two-years.csv line 5: sex is empty; expected one of 'Female', 'Male'"),
        (lambda root: edit_rows(root / FILE, set_value("priors_count", "many")),
         "compas: compas-scores-two-years.csv line 5: priors_count has non-numeric value 'many'; expected a number"),
        (lambda root: edit_rows(root / FILE, set_value("score_text", "Severe")),
         "compas: compas-scores-two-years.csv line 5: score_text has unexpected value 'Severe'"),
    ],
)
def test_bad_input_is_one_clear_line(fixture, tmp_path, capsys, edit, message):
    root = copy(fixture, tmp_path)
    edit(root)
    T.assert_one_line_error(lambda: get_dataset("compas", root=str(root)).load(0),
                            ["datasets", "check", "compas", "--root", str(root)], message.format(root=root), capsys)


def test_bad_option_and_missing_root(capsys):
    with pytest.raises(DatasetError, match="compas: unknown races 'everyone'; choose one of: black-white, all"):
        get_dataset("compas", root="/tmp", races="everyone")
    with pytest.raises(DatasetError, match="dataset 'compas' needs --data-root"):
        get_dataset("compas")
    code = main(["datasets", "check", "compas", "--root", "/nowhere/at/all"])
    assert code == 2 and "compas: data root /nowhere/at/all does not exist" in capsys.readouterr().err
