"""Composition of stored predictions: per-group mixtures of a method and ERM, reports, and mismatch checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from noharm.analysis import predictions as P
from noharm.bench.compose import compose
from noharm.bench.errors import ConfigError


def one_hot_proba(pred: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    """Binary probabilities whose argmax is `pred`."""
    p1 = np.where(pred == 1, confidence, 1 - confidence)
    return np.stack([1 - p1, p1], axis=1)


def table(y, group_id, split, scores, names=("A", "B")) -> pd.DataFrame:
    base = pd.DataFrame({
        "sample_id": np.arange(len(y)), "split": split, "y": y,
        "group": np.asarray(names, dtype=object)[group_id], "group_id": group_id,
    })
    return P.build(base, scores)


@pytest.fixture
def hand_made():
    """Two groups, 10 val + 10 test rows each. Group A's expert is better on val (and worse on test), B's is worse."""
    group_id = np.repeat([0, 1, 0, 1], 10)
    split = np.repeat(["val", "val", "test", "test"], 10)
    y = np.tile(np.array([0, 1] * 5), 4)
    right, wrong = y.copy(), 1 - y
    erm_pred = right.copy()
    erm_pred[[0, 1, 10, 11, 20, 21, 30, 31]] = wrong[[0, 1, 10, 11, 20, 21, 30, 31]]  # ERM: 8/10 everywhere
    exp_pred = right.copy()  # A val: 10/10
    exp_pred[10:15] = wrong[10:15]  # B val: 5/10
    exp_pred[20:25] = wrong[20:25]  # A test: 5/10
    experts = one_hot_proba(exp_pred, 0.9)
    shared = one_hot_proba(right, 0.6)
    method = table(y, group_id, split, {"model": shared, "experts": experts})
    erm = table(y, group_id, split, {"model": one_hot_proba(erm_pred, 0.7)})
    return method, erm


def test_mixture_takes_expert_rows_only_for_chosen_groups(hand_made):
    method, erm = hand_made
    out, report = compose(method, erm, ["greedy", "erm", "experts"])
    assert P.candidates(out) == ["model", "experts", "erm", "selected:greedy", "selected:erm", "selected:experts"]
    in_a = (out["group"] == "A").to_numpy()
    sel = P.proba(out, "selected:greedy")
    np.testing.assert_array_equal(sel[in_a], P.proba(method, "experts")[in_a])
    np.testing.assert_array_equal(sel[~in_a], P.proba(erm, "model")[~in_a])
    np.testing.assert_array_equal(P.proba(out, "erm"), P.proba(erm, "model"))
    np.testing.assert_array_equal(P.proba(out, "selected:erm"), P.proba(erm, "model"))
    np.testing.assert_array_equal(P.proba(out, "selected:experts"), P.proba(method, "experts"))
    # The method's own columns are untouched.
    pd.testing.assert_frame_equal(out[method.columns], method)

    greedy = report["greedy"]
    assert greedy["use_expert"] == {"A": True, "B": False} and greedy["candidate"] == "experts"
    assert greedy["val"]["expert"] == {"A": 1.0, "B": 0.5}
    assert greedy["val"]["erm"] == {"A": 0.8, "B": 0.8}
    assert greedy["val"]["selected"] == {"A": 1.0, "B": 0.8}
    assert greedy["test"]["selected"] == {"A": 0.5, "B": 0.8}
    assert greedy["no_harm"]["val"] == {"A": True, "B": True}
    # Validation said A gains; test disagrees, and the flag reports it.
    assert greedy["no_harm"]["test"] == {"A": False, "B": True}
    assert greedy["n_val"] == {"A": 10, "B": 10} and greedy["status"] == "greedy"
    assert report["experts"]["no_harm"]["val"] == {"A": True, "B": False}
    json.dumps(report, allow_nan=False)


def test_erm_rows_are_aligned_by_sample_id(hand_made):
    method, erm = hand_made
    shuffled = erm.sample(frac=1.0, random_state=0)
    out, _ = compose(method, shuffled, ["greedy"])
    np.testing.assert_array_equal(P.proba(out, "erm"), P.proba(erm, "model"))


def test_erm_with_training_rows_composes_on_the_methods_rows(hand_made):
    """An ERM run that also stored its training split (or an older run) still composes with a val/test-only method."""
    method, erm = hand_made
    train = table(np.array([0, 1]), np.array([0, 1]), np.array(["train", "train"]),
                  {"model": one_hot_proba(np.array([0, 1]))}).assign(sample_id=[100, 101])
    out, _ = compose(method, pd.concat([train, erm], ignore_index=True), ["greedy"])
    plain, _ = compose(method, erm, ["greedy"])
    assert len(out) == 40
    pd.testing.assert_frame_equal(out, plain)


@pytest.mark.parametrize("metric", ["accuracy", "auc"])
@pytest.mark.parametrize("seed", range(4))
def test_selected_never_harms_a_group_on_validation(metric, seed):
    rng = np.random.default_rng(seed)
    n, names = 600, ("a", "b", "c", "d", "e")
    group_id = rng.integers(0, len(names), n)
    split = rng.choice(["train", "val", "test"], n)
    y = rng.integers(0, 2, n)
    noisy = lambda s: np.clip(y + rng.normal(0, s, n), 0.01, 0.99)  # noqa: E731
    experts = np.stack([1 - (p := noisy(rng.uniform(0.3, 0.9))), p], axis=1)
    erm_p = noisy(0.6)
    method = table(y, group_id, split, {"experts": experts}, names)
    erm = table(y, group_id, split, {"model": np.stack([1 - erm_p, erm_p], axis=1)}, names)
    strategies = ["greedy", "ip-gap", "ip-utility"]
    _, report = compose(method, erm, strategies, metric=metric)
    for s in strategies:
        assert all(report[s]["no_harm"]["val"].values()), (s, report[s])
        assert report[s]["status"] in ("greedy", "Optimal")
        for g in names:
            sel, base = report[s]["val"]["selected"][g], report[s]["val"]["erm"][g]
            assert sel >= base
    # Some seeds must actually take experts, or the check above says nothing.
    if seed == 0:
        assert report["greedy"]["n_experts"] > 0


def test_auc_one_class_group_keeps_erm():
    # Group B has only label 1 on validation: its AUC is undefined there, so it keeps ERM.
    group_id = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
    split = np.array(["val"] * 8 + ["test"] * 4)
    y = np.array([0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1])
    good = np.stack([1 - (0.1 + 0.8 * y), 0.1 + 0.8 * y], axis=1)
    flat = np.full((12, 2), 0.5)
    method = table(y, group_id, split, {"experts": good})
    erm = table(y, group_id, split, {"model": flat})
    out, report = compose(method, erm, ["greedy"], metric="auc")
    r = report["greedy"]
    assert r["use_expert"] == {"A": True, "B": False}
    assert r["val"]["expert"]["B"] is None and r["no_harm"]["val"]["B"] is True
    assert r["test"]["selected"]["B"] == 0.5  # ERM's flat scores on test


def test_candidate_choice(hand_made):
    method, erm = hand_made
    _, report = compose(method, erm, ["greedy"], candidate="model")
    assert report["greedy"]["candidate"] == "model"
    only_model = method.drop(columns=[c for c in method.columns if c.startswith("proba/experts/")])
    _, report = compose(only_model, erm, ["greedy"])
    assert report["greedy"]["candidate"] == "model"
    with pytest.raises(ConfigError, match="no candidate 'heads' in the method's predictions; have: model, experts"):
        compose(method, erm, ["greedy"], candidate="heads")


def test_composing_twice_replaces_earlier_columns(hand_made):
    method, erm = hand_made
    once, _ = compose(method, erm, ["greedy"])
    twice, _ = compose(once, erm, ["greedy", "ip-gap"])
    assert P.candidates(twice) == ["model", "experts", "erm", "selected:greedy", "selected:ip-gap"]
    np.testing.assert_array_equal(P.proba(twice, "selected:greedy"), P.proba(once, "selected:greedy"))


def _alter(df: pd.DataFrame, col: str, row: int, value) -> pd.DataFrame:
    df = df.copy()
    df.loc[row, col] = value
    return df


@pytest.mark.parametrize("change, message", [
    (lambda e: _alter(e, "split", 3, "test"),
     r"ERM predictions are for another split/seed: split differs on 1 of 40 rows \(e.g. sample_id 3: 'val' vs ERM 'test'\)"),
    (lambda e: _alter(e, "y", 5, 1 - e.loc[5, "y"]), "another dataset/target"),
    (lambda e: _alter(e, "group", 0, "B"), "another attribute"),
    (lambda e: e.iloc[:-1], "ERM predictions have 39 rows, the method's 40"),
    (lambda e: _alter(e, "sample_id", 0, 999), "ERM predictions lack 1 of the method's samples"),
    (lambda e: e.drop(columns=["group_id"]), r"ERM predictions lack columns \['group_id'\]"),
    (lambda e: e.rename(columns=lambda c: c.replace("proba/model/", "proba/clf/")), "ERM predictions lack candidate 'model'"),
])
def test_mismatched_tables_raise(hand_made, change, message):
    method, erm = hand_made
    with pytest.raises(ValueError, match=message):
        compose(method, change(erm), ["greedy"])


def test_bad_strategy_or_metric(hand_made):
    method, erm = hand_made
    with pytest.raises(ConfigError, match="unknown selection strategy 'best'; choose from: erm, experts, greedy"):
        compose(method, erm, ["greedy", "best"])
    with pytest.raises(ConfigError, match="unknown selection metric 'f1'"):
        compose(method, erm, ["greedy"], metric="f1")


def test_malformed_method_tables_raise(hand_made):
    method, erm = hand_made
    with pytest.raises(ConfigError, match="method predictions repeat sample_id 0"):
        compose(_alter(method, "sample_id", 1, 0), erm, ["greedy"])
    no_scores = method[list(P.KEY_COLUMNS)]
    with pytest.raises(ConfigError, match="method predictions hold no candidate to compose"):
        compose(no_scores, erm, ["greedy"])
    gapped = method.assign(group_id=method["group_id"] * 2)
    with pytest.raises(ConfigError, match=r"group ids must be 0..G-1 with one name each, got ids \[0, 2\]"):
        compose(gapped, erm.assign(group_id=erm["group_id"] * 2), ["greedy"])
