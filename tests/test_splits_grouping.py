import numpy as np
import pandas as pd
import pytest

from noharm.datasets.base import DatasetError
from noharm.datasets.grouping import Grouping
from noharm.datasets.splits import grouped_assign, stratified_assign


def _table(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "sex": rng.choice(["F", "M"], n, p=[0.3, 0.7]),
        "race": rng.choice(["A", "B", "C"], n, p=[0.6, 0.3, 0.1]),
        "y": rng.integers(0, 2, n),
    })


def test_stratified_split_keeps_every_stratum_proportional_and_is_seeded():
    t = _table()
    split = stratified_assign(t[["sex", "race", "y"]], (0.6, 0.2, 0.2), seed=3)
    assert (split == stratified_assign(t[["sex", "race", "y"]], (0.6, 0.2, 0.2), seed=3)).all()
    assert (split != stratified_assign(t[["sex", "race", "y"]], (0.6, 0.2, 0.2), seed=4)).any()
    t["split"] = split
    for _, cell in t.groupby(["sex", "race", "y"]):
        n = len(cell)
        counts = cell["split"].value_counts()
        assert abs(counts.get("train", 0) - 0.6 * n) <= 1
        assert abs(counts.get("val", 0) - 0.2 * n) <= 1.5
        assert counts.sum() == n


def test_grouped_split_never_puts_a_subject_in_two_splits():
    rng = np.random.default_rng(1)
    subjects = rng.integers(0, 300, 1500)
    strata = pd.DataFrame({"y": rng.integers(0, 2, 1500)})
    split = grouped_assign(subjects, strata, (0.8, 0.1, 0.1), seed=0)
    per_subject = pd.Series(split).groupby(subjects).nunique()
    assert per_subject.max() == 1
    share = pd.Series(split).value_counts(normalize=True)
    assert 0.7 < share["train"] < 0.9


def test_bad_fractions_raise():
    with pytest.raises(DatasetError, match="sum to 1"):
        stratified_assign(np.zeros(10), (0.5, 0.2, 0.2), seed=0)


def test_intersectional_grouping_names_ids_and_small_groups():
    t = _table(400)
    t["split"] = stratified_assign(t[["sex", "race", "y"]], (0.6, 0.2, 0.2), seed=0)
    g = Grouping.from_table(t, "sex+race", ["sex", "race"], min_size=15)
    assert g.n_groups == 6
    assert g.names[0] == "F x A"
    expected = (t["sex"] + " x " + t["race"]).to_numpy()
    assert (np.asarray(g.names)[g.ids] == expected).all()
    # Small groups are reported, never dropped.
    counts = g.counts
    assert set(g.small_groups) == {n for n in g.names if (counts.loc[n] < 15).any()}
    assert counts.to_numpy().sum() == len(t)


def test_unknown_attribute_lists_choices():
    t = _table(50)
    t["split"] = "train"
    with pytest.raises(DatasetError, match="unknown attribute 'age'; choose one of: sex, race"):
        Grouping.from_table(t, "age", ["sex", "race"])
    with pytest.raises(DatasetError, match="unknown attribute"):
        Grouping.from_table(t, "sex+sex", ["sex", "race"])
