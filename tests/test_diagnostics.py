"""Failure signatures of experts: numbers checked against scikit-learn and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from noharm.analysis.diagnostics import (COLLAPSED_COSINE, between_class_cosine, expert_diagnostics, feature_rows,
                                  majority_share, warnings_text)


def test_majority_share_and_cosine_by_hand():
    assert majority_share(np.array([1, 1, 0, 1])) == 0.75 and math.isnan(majority_share(np.array([], int)))
    # Rows of class 0 along x, class 1 along y: orthogonal, cosine 0; the same direction: 1.
    feats = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert between_class_cosine(feats, np.array([0, 0, 1])) == pytest.approx(0.0)
    assert between_class_cosine(np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([0, 1])) == pytest.approx(1.0)
    assert math.isnan(between_class_cosine(feats, np.array([0, 0, 0])))


def test_expert_diagnostics_flag_one_class_and_collapse_and_match_sklearn():
    rng = np.random.default_rng(0)
    n = 400
    groups = rng.integers(0, 3, n)
    y = rng.integers(0, 2, n)
    pred = np.where(groups == 1, 0, y)  # group 1's expert always says 0
    pred[(groups == 0) & (rng.random(n) < 0.2)] ^= 1  # group 0: 80 % right
    proba = np.eye(2)[pred]
    feats = rng.normal(size=(n, 4))
    feats[groups == 2] = np.array([1.0, 2.0, 3.0, 4.0]) + 1e-4 * rng.normal(size=((groups == 2).sum(), 4))
    d = expert_diagnostics(y, proba, groups, ["a", "b", "c"], "experts", feats)
    for g, name in enumerate("abc"):
        m = groups == g
        assert d[f"diag/experts/bal_acc/group:{name}"] == pytest.approx(balanced_accuracy_score(y[m], pred[m]))
    assert d["diag/experts/majority_share/group:b"] == 1.0
    assert d["diag/experts/between_class_cosine/group:c"] >= COLLAPSED_COSINE
    assert d["diag/experts/between_class_cosine/group:a"] < 0.5
    assert d["diag/experts/flagged_groups"] == 2  # b (one class) and c (collapsed)
    lines = warnings_text(d, "experts")
    assert len(lines) == 2 and "'b'" in lines[1] + lines[0] and "collapsed" in " ".join(lines)


def test_features_of_a_subset_give_the_same_cosine_as_all_rows_when_the_subset_is_everything():
    rng = np.random.default_rng(1)
    groups, y = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    feats = rng.normal(size=(300, 3))
    proba = np.eye(2)[y]
    full = expert_diagnostics(y, proba, groups, ["a", "b"], "experts", feats)
    rows = feature_rows(groups, 2, per_group=50)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    part = expert_diagnostics(y, proba, groups, ["a", "b"], "experts", feats[rows], rows)
    every = expert_diagnostics(y, proba, groups, ["a", "b"], "experts", feats[feature_rows(groups, 2)],
                               feature_rows(groups, 2))
    assert every == full
    for g in "ab":  # the subset's cosine is its own rows' mean, bal_acc still uses every row
        m = groups[rows] == "ab".index(g)
        assert part[f"diag/experts/between_class_cosine/group:{g}"] == pytest.approx(
            between_class_cosine(feats[rows][m], y[rows][m]))
        assert part[f"diag/experts/bal_acc/group:{g}"] == full[f"diag/experts/bal_acc/group:{g}"]
