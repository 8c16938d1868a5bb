"""noharm.analysis.metrics cross-checked against scikit-learn, fairlearn and explicit references."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    true_positive_rate,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

from noharm.analysis.metrics import (
    HIGHER_IS_BETTER,
    PER_GROUP_METRICS,
    accuracy_by_group,
    binary_auc,
    evaluate,
    fairness_differences,
    group_table,
    summarize,
    validate_inputs,
)

TIGHT = dict(rel=1e-12, abs=1e-12)


def make_predictions(seed: int, n_classes: int, sizes: list[int]):
    """Labels, informative probabilities and group ids; every group holds every class."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    y = rng.integers(0, n_classes, len(groups))
    # The first n_classes rows of each group cycle through the classes, so even a
    # 7-sample group has every class and every AUC is defined.
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for s in starts:
        y[s:s + n_classes] = np.arange(n_classes)
    logits = rng.normal(size=(len(y), n_classes)) + 1.5 * np.eye(n_classes)[y] * rng.uniform(0, 1, (len(y), 1))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    perm = rng.permutation(len(y))
    return y[perm], proba[perm], groups[perm]


def intersectional(seed: int, n_classes: int):
    """Two attributes crossed into 2 x 2 = 4 groups, one intersection of only 7 samples."""
    sizes = [180, 120, 90, 7]  # (a0,b0), (a0,b1), (a1,b0), (a1,b1)
    y, proba, groups = make_predictions(seed, n_classes, sizes)
    a, b = groups // 2, groups % 2
    return y, proba, groups, a, b


CASES = [
    pytest.param(seed, c, sizes, id=f"seed{seed}-C{c}-G{len(sizes)}")
    for seed, c, sizes in [
        (0, 2, [150, 250]),
        (1, 2, [100, 80, 7]),
        (2, 2, [60, 90, 7, 120, 40]),
        (3, 3, [200, 150]),
        (4, 3, [90, 7, 110, 60]),
        (5, 3, [50, 60, 70, 80, 7]),
    ]
]


def names(g: int) -> list[str]:
    return [f"g{i}" for i in range(g)]


def sklearn_auc(y, proba):
    if proba.shape[1] == 2:
        return roc_auc_score(y, proba[:, 1])
    return roc_auc_score(y, proba, multi_class="ovr", average="macro")


def reference_ece(y, proba, n_bins=15):
    """Guo et al. (2017), written out bin by bin."""
    conf, pred = proba.max(axis=1), proba.argmax(axis=1)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs((pred[in_bin] == y[in_bin]).mean() - conf[in_bin].mean())
    return total


# ---------------------------------------------------------------- per-group metrics vs sklearn


@pytest.mark.parametrize("seed,n_classes,sizes", CASES)
def test_group_table_matches_sklearn(seed, n_classes, sizes):
    y, proba, groups = make_predictions(seed, n_classes, sizes)
    table = group_table(y, proba, groups, names(len(sizes)))
    assert list(table.index) == ["overall", *names(len(sizes))]
    assert list(table.columns) == ["n", *PER_GROUP_METRICS]
    for row, mask in [("overall", np.ones(len(y), bool))] + [(f"g{g}", groups == g) for g in range(len(sizes))]:
        yy, pp = y[mask], proba[mask]
        pred = pp.argmax(axis=1)
        got = table.loc[row]
        assert got["n"] == mask.sum()
        assert got["acc"] == pytest.approx(accuracy_score(yy, pred), **TIGHT)
        assert got["bal_acc"] == pytest.approx(balanced_accuracy_score(yy, pred), **TIGHT)
        assert got["auc"] == pytest.approx(sklearn_auc(yy, pp), rel=1e-10)
        assert got["ece"] == pytest.approx(reference_ece(yy, pp), rel=1e-10, abs=1e-12)
        if n_classes == 2:
            tn, fp, fn, tp = confusion_matrix(yy, pred, labels=[0, 1]).ravel()
            assert got["tpr"] == pytest.approx(tp / (tp + fn), **TIGHT)
            assert got["fpr"] == pytest.approx(fp / (fp + tn), **TIGHT)
        else:
            assert math.isnan(got["tpr"]) and math.isnan(got["fpr"])


def test_metrics_are_not_trivial():
    # Guard against a generator so easy or so hard that every comparison passes vacuously.
    y, proba, groups = make_predictions(0, 2, [150, 250])
    t = group_table(y, proba, groups, names(2))
    assert 0.6 < t.loc["overall", "acc"] < 0.95
    assert 0.6 < t.loc["overall", "auc"] < 0.99
    assert t.loc["overall", "ece"] > 0.01
    assert t.loc["g0", "acc"] != t.loc["g1", "acc"]


def test_bal_acc_ignores_absent_classes_like_sklearn():
    # Group 1 has no class-2 samples, and its predictions include class 2.
    y = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 1])
    groups = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 1, 2, 1, 1, 0, 2, 0, 1, 1])
    proba = np.full((10, 3), 0.1)
    proba[np.arange(10), pred] = 0.8
    with pytest.warns(UserWarning, match="absent"):
        t = group_table(y, proba, groups, ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred holds a class absent from y_true
        expected = balanced_accuracy_score(y[groups == 1], pred[groups == 1])
    assert t.loc["b", "bal_acc"] == pytest.approx(expected, **TIGHT) == 0.75
    assert math.isnan(t.loc["b", "auc"])  # class 2 absent: multiclass AUC undefined


# ---------------------------------------------------------------- vs fairlearn


@pytest.mark.parametrize("seed,n_classes,sizes", [c for c in CASES if c.values[1] == 2])
def test_binary_summary_matches_fairlearn(seed, n_classes, sizes):
    y, proba, groups = make_predictions(seed, n_classes, sizes)
    pred, score = proba.argmax(axis=1), proba[:, 1]
    out = evaluate(y, proba, groups, names(len(sizes)))
    sf = pd.Series([f"g{g}" for g in groups], name="group")
    frames = {
        "acc": MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=sf),
        "bal_acc": MetricFrame(metrics=balanced_accuracy_score, y_true=y, y_pred=pred, sensitive_features=sf),
        "auc": MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=score, sensitive_features=sf),
        "tpr": MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=pred, sensitive_features=sf),
        "fpr": MetricFrame(metrics=false_positive_rate, y_true=y, y_pred=pred, sensitive_features=sf),
    }
    for m, mf in frames.items():
        assert out[m] == pytest.approx(mf.overall, rel=1e-10)
        for name, value in mf.by_group.items():
            assert out[f"{m}/group:{name}"] == pytest.approx(value, rel=1e-10)
        worst = mf.group_min() if HIGHER_IS_BETTER[m] else mf.group_max()
        assert out[f"{m}/worst"] == pytest.approx(worst, rel=1e-10)
        assert out[f"{m}/gap"] == pytest.approx(mf.difference(), rel=1e-10, abs=1e-12)
    assert out["dp_diff"] == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=sf), **TIGHT)
    assert out["eodds_diff"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=sf), **TIGHT)
    assert out["eopp_diff"] == pytest.approx(frames["tpr"].difference(), **TIGHT)
    assert out["dp_diff"] > 0 and out["eodds_diff"] >= out["eopp_diff"] > 0
    for g, size in enumerate(sizes):
        assert out[f"n/group:g{g}"] == size


@pytest.mark.parametrize("seed,n_classes", [(10, 2), (11, 2), (12, 3)])
def test_intersections_match_fairlearn_multi_column_frame(seed, n_classes):
    y, proba, groups, a, b = intersectional(seed, n_classes)
    pred = proba.argmax(axis=1)
    group_names = ["a0_b0", "a0_b1", "a1_b0", "a1_b1"]
    out = evaluate(y, proba, groups, group_names)
    sf = pd.DataFrame({"a": [f"a{v}" for v in a], "b": [f"b{v}" for v in b]})
    metrics = {"acc": accuracy_score, "bal_acc": balanced_accuracy_score}
    if n_classes == 2:
        metrics.update(tpr=true_positive_rate, fpr=false_positive_rate)
    mf = MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=sf)
    for (av, bv), row in mf.by_group.iterrows():
        for m in metrics:
            assert out[f"{m}/group:{av}_{bv}"] == pytest.approx(row[m], rel=1e-12)
    assert out["n/group:a1_b1"] == 7
    for m in metrics:
        worst = mf.group_min()[m] if HIGHER_IS_BETTER[m] else mf.group_max()[m]
        assert out[f"{m}/worst"] == pytest.approx(worst, rel=1e-12)
        assert out[f"{m}/gap"] == pytest.approx(mf.difference()[m], rel=1e-12, abs=1e-12)
    for name in group_names:
        rows = groups == group_names.index(name)
        assert out[f"auc/group:{name}"] == pytest.approx(sklearn_auc(y[rows], proba[rows]), rel=1e-10)
    if n_classes == 2:
        assert out["dp_diff"] == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=sf), **TIGHT)
        assert out["eodds_diff"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=sf), **TIGHT)
        assert out["eopp_diff"] == pytest.approx(mf.difference()["tpr"], **TIGHT)
    else:
        assert all(math.isnan(out[k]) for k in ("dp_diff", "eopp_diff", "eodds_diff"))


def test_fairness_differences_hand_computed():
    # g0: pred=1 rate 2/4, TPR 1/2, FPR 1/2; g1: rate 3/4, TPR 1, FPR 1/2; g2 empty.
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    pred = np.array([1, 0, 1, 0, 1, 1, 1, 0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    proba = np.stack([1 - pred, pred], axis=1).astype(float)
    d = fairness_differences(y, proba, groups, 3)
    assert d == pytest.approx({"dp_diff": 0.25, "eopp_diff": 0.5, "eodds_diff": 0.5})


def test_fairness_differences_ignore_groups_without_positives_or_negatives():
    # g2 has only negatives (TPR undefined) and g3 only positives (FPR undefined).
    y = np.array([1, 0, 1, 0, 0, 0, 1, 1])
    pred = np.array([1, 0, 0, 1, 1, 1, 1, 0])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    proba = np.stack([1 - pred, pred], axis=1).astype(float)
    d = fairness_differences(y, proba, groups, 4)
    # TPR: g0 1, g1 0, g3 0.5 -> 1.  FPR: g0 0, g1 1, g2 1 -> 1.  P(pred=1): .5, .5, 1, .5 -> .5
    assert d == pytest.approx({"dp_diff": 0.5, "eopp_diff": 1.0, "eodds_diff": 1.0})
    # Drop g0/g1 so the ignored groups would matter if they were counted as 0.
    keep = groups >= 2
    d = fairness_differences(y[keep], proba[keep], groups[keep], 4)
    assert d["eopp_diff"] == 0.0 and d["dp_diff"] == 0.5
    assert d["eodds_diff"] == 0.0  # only one group each has a TPR and an FPR


def test_fairness_differences_nan_for_multiclass():
    y, proba, groups = make_predictions(3, 3, [50, 50])
    d = fairness_differences(y, proba, groups, 2)
    assert set(d) == {"dp_diff", "eopp_diff", "eodds_diff"} and all(math.isnan(v) for v in d.values())


# ---------------------------------------------------------------- ECE


@pytest.mark.parametrize("n_bins", [1, 5, 15, 40])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_ece_matches_explicit_bins(n_bins, n_classes):
    y, proba, groups = make_predictions(20 + n_bins, n_classes, [300, 200])
    t = group_table(y, proba, groups, ["a", "b"], n_bins=n_bins)
    for row, mask in [("overall", slice(None)), ("a", groups == 0), ("b", groups == 1)]:
        assert t.loc[row, "ece"] == pytest.approx(reference_ece(y[mask], proba[mask], n_bins), rel=1e-10, abs=1e-12)
    assert t.loc["overall", "ece"] > 0


def test_ece_on_bin_edges_and_perfect_calibration():
    # With 5 bins, confidence 0.8 sits exactly on an edge and belongs to (0.6, 0.8], beside the
    # correct 0.7, not to (0.8, 1.0] beside the wrong 0.9: the two placements give different ECEs.
    proba = np.array([[0.3, 0.7], [0.8, 0.2], [0.1, 0.9], [0.0, 1.0]])
    y = np.array([1, 1, 0, 1])  # 0.7 right, 0.8 wrong, 0.9 wrong, 1.0 right
    t = group_table(y, proba, np.zeros(4, int), ["all"], n_bins=5)
    assert t.loc["overall", "ece"] == pytest.approx(reference_ece(y, proba, 5), **TIGHT)
    assert t.loc["overall", "ece"] == pytest.approx((abs(1 - 0.7 - 0.8) + 0.9 + 0) / 4, **TIGHT)
    # Confidence 0.75 and exactly 3 of 4 right: perfectly calibrated.
    proba = np.tile([0.25, 0.75], (4, 1))
    t = group_table(np.array([1, 1, 1, 0]), proba, np.zeros(4, int), ["all"])
    assert t.loc["overall", "ece"] == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------- accuracy_by_group


def test_accuracy_by_group_1d_and_2d():
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 4, 500)
    groups[groups == 2] = 3  # group 2 is empty
    correct = rng.random((6, 500)) < np.linspace(0.2, 0.9, 6)[:, None]
    got = accuracy_by_group(correct, groups, 5)
    assert got.shape == (6, 5)
    expected = np.array([[correct[r, groups == g].mean() if (groups == g).any() else np.nan for g in range(5)]
                         for r in range(6)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    for r in range(6):
        np.testing.assert_allclose(accuracy_by_group(correct[r], groups, 5), got[r], rtol=1e-12, equal_nan=True)
    assert np.isnan(got[:, 2]).all() and np.isnan(got[:, 4]).all() and not np.isnan(got[:, [0, 1, 3]]).any()
    # Repeats really differ, so a row mix-up would be caught.
    assert got[0, 0] < 0.35 < 0.75 < got[5, 0]


# ---------------------------------------------------------------- AUC


def test_binary_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    score = np.round(rng.random(400) * 0.6 + 0.3 * y, 1)  # ~10 distinct values: many ties, across classes
    assert len(np.unique(score)) < 15
    assert binary_auc(y, score) == pytest.approx(roc_auc_score(y, score), **TIGHT)
    assert binary_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert binary_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert binary_auc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0


def test_binary_auc_one_class_is_nan_with_warning():
    with pytest.warns(UserWarning, match="only one class"):
        assert math.isnan(binary_auc(np.ones(5, int), np.linspace(0, 1, 5)))
    with pytest.warns(UserWarning, match="only one class"):
        assert math.isnan(binary_auc(np.zeros(0, int), np.zeros(0)))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.one_of(st.integers(0, 4).map(float), st.floats(0, 1))),
             min_size=2, max_size=40).filter(lambda rows: len({r[0] for r in rows}) == 2)
)
def test_binary_auc_equals_sklearn_property(rows):
    y = np.array([r[0] for r in rows])
    score = np.array([r[1] for r in rows])
    assert binary_auc(y, score) == pytest.approx(roc_auc_score(y, score), rel=1e-12, abs=1e-12)


def test_one_class_group_gives_nan_auc_and_worst_gap_ignore_it():
    y, proba, groups = make_predictions(30, 2, [120, 100, 20])
    y[groups == 2] = 0  # group g2 now has negatives only
    with pytest.warns(UserWarning, match="only one class"):
        out = evaluate(y, proba, groups, names(3))
    assert math.isnan(out["auc/group:g2"]) and math.isnan(out["tpr/group:g2"])
    assert not math.isnan(out["fpr/group:g2"]) and not math.isnan(out["acc/group:g2"])
    aucs = [roc_auc_score(y[groups == g], proba[groups == g, 1]) for g in (0, 1)]
    assert out["auc/worst"] == pytest.approx(min(aucs), **TIGHT)
    assert out["auc/gap"] == pytest.approx(max(aucs) - min(aucs), **TIGHT)
    assert out["auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]), **TIGHT)
    tprs = [out[f"tpr/group:g{g}"] for g in (0, 1)]
    assert out["tpr/worst"] == min(tprs) and out["eopp_diff"] == pytest.approx(max(tprs) - min(tprs), **TIGHT)


def test_multiclass_group_missing_a_class_gives_nan_auc_with_warning():
    y, proba, groups = make_predictions(31, 3, [90, 60])
    keep = ~((groups == 1) & (y == 2))
    y, proba, groups = y[keep], proba[keep], groups[keep]
    with pytest.warns(UserWarning, match=r"classes \[2\] absent"):
        t = group_table(y, proba, groups, ["a", "b"])
    assert math.isnan(t.loc["b", "auc"])
    assert t.loc["a", "auc"] == pytest.approx(sklearn_auc(y[groups == 0], proba[groups == 0]), rel=1e-10)


def test_empty_group_and_all_nan_metric():
    y, proba, groups = make_predictions(32, 2, [40, 30])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty group is not an AUC warning case
        out = evaluate(y, proba, groups, ["a", "b", "nobody"])
    assert out["n/group:nobody"] == 0
    assert all(math.isnan(out[f"{m}/group:nobody"]) for m in PER_GROUP_METRICS)
    assert out["acc/worst"] == min(out["acc/group:a"], out["acc/group:b"])
    y, proba, groups = make_predictions(33, 3, [40, 30])
    out = evaluate(y, proba, groups, ["a", "b"])
    assert math.isnan(out["tpr/worst"]) and math.isnan(out["tpr/gap"]) and math.isnan(out["fpr"])


def test_summarize_keys_worst_direction_and_gap():
    table = pd.DataFrame(
        {"n": [30, 10, 20], "acc": [0.8, 0.9, 0.7], "bal_acc": [0.7, 0.6, np.nan], "auc": [0.9, np.nan, np.nan],
         "tpr": [0.5, 0.4, 0.6], "fpr": [0.2, 0.1, 0.3], "ece": [0.05, 0.02, 0.08]},
        index=["overall", "x", "y"],
    )
    out = summarize(table)
    assert out["acc/worst"] == 0.7 and out["acc/gap"] == pytest.approx(0.2)
    assert out["fpr/worst"] == 0.3 and out["ece/worst"] == 0.08  # lower is better: worst is the max
    assert out["bal_acc/worst"] == 0.6 and out["bal_acc/gap"] == 0.0  # NaN group ignored
    assert math.isnan(out["auc/worst"]) and math.isnan(out["auc/gap"]) and out["auc"] == 0.9
    assert out["n/group:x"] == 10 and out["tpr/group:y"] == 0.6
    expected_keys = {f"{m}{s}" for m in PER_GROUP_METRICS for s in ("", "/group:x", "/group:y", "/worst", "/gap")}
    assert set(out) == expected_keys | {"n/group:x", "n/group:y"}
    assert all(type(v) is float for v in out.values())
    assert set(HIGHER_IS_BETTER) == set(PER_GROUP_METRICS)


# ---------------------------------------------------------------- validation


def good_inputs():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    groups = np.array([0, 1, 0, 1])
    return y, proba, groups


def test_validate_accepts_good_inputs():
    validate_inputs(*good_inputs(), 2)


def test_validate_length_mismatch():
    y, proba, groups = good_inputs()
    with pytest.raises(ValueError, match="length mismatch.*y has 3"):
        validate_inputs(y[:3], proba, groups, 2)
    with pytest.raises(ValueError, match="length mismatch.*groups 5"):
        validate_inputs(y, proba, np.append(groups, 0), 2)


def test_validate_proba_not_2d():
    y, proba, groups = good_inputs()
    with pytest.raises(ValueError, match=r"proba must be 2-D.*shape \(4,\)"):
        validate_inputs(y, proba[:, 1], groups, 2)
    with pytest.raises(ValueError, match="C >= 2"):
        validate_inputs(y, np.ones((4, 1)), groups, 2)


def test_validate_rows_not_summing_to_one():
    y, proba, groups = good_inputs()
    with pytest.raises(ValueError, match="sum to 1.*not logits"):
        validate_inputs(y, np.log(proba), groups, 2)
    proba[0] += [1e-3, 0]
    with pytest.raises(ValueError, match="sum to 1"):
        validate_inputs(y, proba, groups, 2)
    proba[0] -= [1e-3 - 1e-6, 0]  # within tolerance
    validate_inputs(y, proba, groups, 2)


def test_validate_label_out_of_range():
    y, proba, groups = good_inputs()
    with pytest.raises(ValueError, match=r"label outside 0\.\.1.*2 classes"):
        validate_inputs(np.array([0, 1, 2, 0]), proba, groups, 2)
    with pytest.raises(ValueError, match="label outside"):
        validate_inputs(np.array([0, -1, 1, 0]), proba, groups, 2)
    with pytest.raises(ValueError, match="integer class labels"):
        validate_inputs(y.astype(float), proba, groups, 2)


def test_validate_group_out_of_range():
    y, proba, groups = good_inputs()
    with pytest.raises(ValueError, match=r"group id outside 0\.\.1.*2 groups"):
        validate_inputs(y, proba, np.array([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match="group id outside"):
        group_table(y, proba, np.array([0, -1, 1, 0]), ["a", "b"])


def test_validate_nan_in_proba():
    y, proba, groups = good_inputs()
    proba[2] = [np.nan, np.nan]
    with pytest.raises(ValueError, match="NaN"):
        validate_inputs(y, proba, groups, 2)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(y, proba, groups, ["a", "b"])


def test_group_table_rejects_duplicate_group_names():
    with pytest.raises(ValueError, match="unique"):
        group_table(*good_inputs(), ["a", "a"])


# ---------------------------------------------------------------- layering


def test_analysis_imports_no_upstream_package():
    code = (
        "import sys, analysis.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'bench', 'methods', 'datasets', 'torch'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
