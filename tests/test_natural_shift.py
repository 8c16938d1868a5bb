"""Natural shift: out-of-domain `shift:<name>` splits from a split file, the tabular `shift=` option and the datasets'
own domains; every trial scores them, nothing that decides reads them; bad input exits 2 with nothing written."""

from __future__ import annotations

import csv
import importlib
import json
import sys

import numpy as np
import pandas as pd
import pytest

from noharm.analysis import predictions as P
from noharm.analysis import record as R
from noharm.bench.cli import main
from noharm.bench.compose import compose
from noharm.bench.sweep.keys import trial_key
from noharm.bench.trial import TrialConfig, run_trial
from noharm.datasets import DATASETS, DatasetError, get_dataset
from noharm.datasets.base import SHIFT_PREFIX
from noharm.datasets.shifts import check_requested_shifts, shift_name
from noharm.methods import METHODS
from tests import tabular_layouts as T

pytestmark = pytest.mark.filterwarnings("ignore")

TINY = {"epochs": 3, "hidden": 16, "batch_size": 64}


# ---- the record ----------------------------------------------------------------------------------
def test_record_names_and_parses_shift_splits():
    assert R.SHIFT_PREFIX == SHIFT_PREFIX  # datasets write what the record reads
    name = R.metric_name(R.metric_key(R.shift_split("Self-emp-inc"), R.selected("greedy"), "acc", "Female"))
    assert name == "shift:Self-emp-inc/selected:greedy/acc/group:Female"
    assert R.parse_metric(name, {}) == ("shift:Self-emp-inc", "selected:greedy", "acc", "Female")
    assert R.parse_metric("shift:thin/model/auc/gap", {}) == ("shift:thin", "model", "auc", "gap")
    assert R.parse_metric("shift:/model/acc", {}) is None  # a prefix without a name is no split
    assert R.scored_splits(["shift:b", "train", "test", "shift:a", "val"]) == ["val", "test", "shift:a", "shift:b"]
    assert R.shift_domain("shift:TX") == "TX" and not R.is_shift("test")
    assert shift_name("Outlying-US(Guam-USVI-etc)") == "shift:Outlying-US_Guam-USVI-etc_"


# ---- way 1: a split file with shift:<name> rows, any dataset (a plugin here) -------------------------
@pytest.fixture(scope="module")
def testkit():
    """The sweep testkit's datasets and methods, registered in this process (removed afterwards)."""
    before = {r: set(r._items) for r in (DATASETS, METHODS)}
    module = importlib.import_module("tests.plugins.noharm_sweep_testkit")
    yield module
    for registry, names in before.items():
        for name in set(registry._items) - names:
            registry._items.pop(name)
    sys.modules.pop(module.__name__, None)


def test_split_file_shift_rows_are_scored_by_a_plugin_trial(testkit, tmp_path):
    """tiny-blobs, a plugin dataset without a line of shift code, takes shift splits from a split file."""
    ids = [str(i) for i in range(600)]
    split = np.array(["train", "val", "test"])[np.arange(600) % 3].astype(object)
    split[500:550], split[550:] = "shift:site-c", "shift:site.d"
    path = tmp_path / "split.csv"
    pd.DataFrame({"sample_id": ids, "split": split}).to_csv(path, index=False)
    result = run_trial(TrialConfig(dataset="tiny-blobs", attribute="side", method="erm",
                                   hparams=TINY, dataset_options={"split_file": str(path)}), device="cpu")
    preds = result.predictions
    assert preds["split"].value_counts().to_dict()["shift:site-c"] == 50
    assert set(preds["split"]) == {"val", "test", "shift:site-c", "shift:site.d"}  # train is not stored
    rows = preds[preds["split"] == "shift:site-c"]
    acc = float((P.proba(rows, "model").argmax(1) == rows["y"]).mean())
    assert result.metrics["shift:site-c/model/acc"] == pytest.approx(acc)
    assert {"shift:site.d/model/acc/worst", "shift:site.d/model/auc/gap"} <= set(result.metrics)


def test_a_split_file_shift_that_empties_a_class_in_val_is_refused(testkit, tmp_path):
    bundle = get_dataset("tiny-blobs").load(0)
    split = bundle.table["split"].to_numpy(object).copy()
    split[(split == "val") & (bundle.table["y"].to_numpy() == 1)] = "shift:ones"
    path = tmp_path / "split.csv"
    pd.DataFrame({"sample_id": bundle.table["sample_id"], "split": split}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="the shift split shift:ones leaves class 1 with no val rows"):
        get_dataset("tiny-blobs", split_file=str(path)).load(0)


# ---- way 2: the tabular option -------------------------------------------------------------------
def test_adult_shift_option_holds_rows_out_before_the_split():
    own = get_dataset("adult").load(0).table
    b = get_dataset("adult", shift="workclass:Self-emp-inc,Without-pay").load(0)
    t = b.table
    raw = own.assign(workclass=get_dataset("adult").read_rows().domains["workclass"].to_numpy())
    held = raw["workclass"].isin(["Self-emp-inc", "Without-pay"]).to_numpy()
    assert t["sample_id"].tolist() == own["sample_id"].tolist()  # same rows, same order
    assert (t["split"].to_numpy()[held] == np.where(raw["workclass"][held] == "Self-emp-inc", "shift:Self-emp-inc",
                                                    "shift:Without-pay")).all()
    assert set(t["split"][~held]) == {"train", "val", "test"}
    assert b.shift_splits == ["shift:Self-emp-inc", "shift:Without-pay"]
    # The official test split is kept for the in-domain rows; validation stays 20% of the official train rows.
    assert (t["split"][~held & own["sample_id"].str.startswith("test-").to_numpy()] == "test").all()
    train_val = t["split"][~held].isin(["train", "val"])
    assert (t["split"][~held][train_val] == "val").mean() == pytest.approx(0.2, abs=0.002)
    # The scaling is fitted on the in-domain training rows only.
    age = b.x[:, 0].astype(np.float64)
    assert abs(age[t["split"].to_numpy() == "train"].mean()) < 1e-4


def test_shift_splits_are_in_the_trial_key():
    base = dict(dataset="adult", attribute="sex", method="erm")
    keys = {trial_key(TrialConfig(**base)),
            trial_key(TrialConfig(**base, dataset_options={"shift": "workclass:Self-emp-inc"})),
            trial_key(TrialConfig(**base, dataset_options={"shift": "workclass:Federal-gov"})),
            trial_key(TrialConfig(dataset="digits-shift", attribute="style", method="erm",
                                  dataset_options={"held_out_styles": "slant"}))}
    assert len(keys) == 4


@pytest.fixture(scope="module")
def compas_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compas")
    T.write_compas(root)
    path = root / "compas-scores-two-years.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("compas_screening_date")
    for i, row in enumerate(rows[1:]):
        row[column] = "2014-02-03" if i % 3 == 0 else "2013-08-14"
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return root


def test_compas_shifts_by_screening_year(compas_root):
    b = get_dataset("compas", root=str(compas_root), shift="screening_year:2014").load(0)
    with open(compas_root / "compas-scores-two-years.csv", newline="") as f:
        file = list(csv.DictReader(f))
    year_of = {f"id-{r['id']}": r["compas_screening_date"][:4] for r in file}
    years = b.table["sample_id"].map(year_of)
    assert (b.table["split"][years == "2014"] == "shift:2014").all()
    assert set(b.table["split"][years == "2013"]) == {"train", "val", "test"}
    with pytest.raises(DatasetError, match="column 'race' is a sensitive attribute"):
        get_dataset("compas", root=str(compas_root), shift="race:Caucasian")
    with pytest.raises(DatasetError, match="column 'two_year_recid' is the target"):
        get_dataset("compas", root=str(compas_root), shift="two_year_recid:1")


@pytest.fixture(scope="module")
def acs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("acs")
    T.write_acs(root, n=240)
    T.write_acs(root, state="TX", st=48, n=200, seed=1)
    T.write_acs(root, year=2019, n=200, seed=2)
    return root


def test_acs_state_shift_option_over_two_training_states(acs_root, tmp_path):
    b = get_dataset("acs-income", root=str(acs_root), state="CA,TX", shift="state:TX",
                    cache_dir=str(tmp_path)).load(0)
    texas = b.table["sample_id"].str.contains("HU48|GQ48", regex=True)
    assert texas.sum() > 150 and (b.table["split"][texas] == "shift:TX").all()
    assert set(b.table["split"][~texas]) == {"train", "val", "test"}


def test_bank_shifts_by_day_of_week(tmp_path):
    written = T.write_bank(tmp_path, n=300)
    b = get_dataset("bank", root=str(tmp_path), shift="day_of_week:fri").load(0)
    friday = (written.loc[written["why"] == "", "day_of_week"] == "fri").to_numpy()
    assert friday.sum() > 50 and (b.table["split"][friday] == "shift:fri").all()
    assert set(b.table["split"][~friday]) == {"train", "val", "test"}
    with pytest.raises(DatasetError, match="column 'marital' is a sensitive attribute"):
        get_dataset("bank", root=str(tmp_path), shift="marital:single")
    # In this fixture every divorced client was called in November: holding November out empties that group.
    with pytest.raises(DatasetError, match="shift:nov leaves group 'divorced' of marital with no train rows"):
        get_dataset("bank", root=str(tmp_path), shift="month:nov").load(0)


# ---- way 3: the datasets' own domains -------------------------------------------------------------
def test_acs_test_state_and_test_year_read_other_files_as_shift_splits(acs_root, tmp_path):
    cache = str(tmp_path)
    own = get_dataset("acs-income", root=str(acs_root), cache_dir=cache).load(0).table
    ds = get_dataset("acs-income", root=str(acs_root), test_state="TX", test_year=2019, cache_dir=cache)
    b = ds.load(0)
    t = b.table
    counts = t["split"].value_counts()
    assert counts["shift:TX"] > 150 and counts["shift:2019"] > 150
    assert (t["split"][t["sample_id"].str.startswith("2019")] == "shift:2019").all()
    # The training state and year keep their rows and their split, exactly.
    in_domain = t[t["split"].isin(["train", "val", "test"])]
    assert in_domain["sample_id"].tolist() == own["sample_id"].tolist()
    assert in_domain["split"].tolist() == own["split"].tolist()
    assert ds.requests_shifts()
    with pytest.raises(DatasetError, match="CA is both a training and a test state"):
        get_dataset("acs-income", root=str(acs_root), test_state="CA")
    with pytest.raises(DatasetError, match="missing .*psam_p36.csv"):
        get_dataset("acs-income", root=str(acs_root), test_state="NY").load(0)


def test_digits_shift_held_out_styles_redraw_the_test_digits():
    plain = get_dataset("digits-shift", image_size=16).load(1)
    b = get_dataset("digits-shift", image_size=16, held_out_styles="slant,thin").load(1)
    t, n = b.table, len(plain.table)
    assert t.iloc[:n]["split"].tolist() == plain.table["split"].tolist()
    assert np.array_equal(b.x[:n], plain.x)  # in-domain images unchanged
    test = plain.table[plain.table["split"] == "test"]
    for style in ("slant", "thin"):
        part = t[t["split"] == f"shift:{style}"]
        assert part["sample_id"].tolist() == (test["sample_id"] + f"-{style}").tolist()
        assert part["y"].tolist() == test["y"].tolist() and part["style"].tolist() == test["style"].tolist()
        redrawn = b.x[part.index.to_numpy()].astype(np.int16)
        # Not the test images again: the held-out stroke changes every image.
        assert (np.abs(redrawn - plain.x[test.index.to_numpy()].astype(np.int16)).mean(axis=(1, 2, 3)) > 3).all()
    with pytest.raises(DatasetError, match="unknown held-out style 'bold'; choose from: slant, thin, erode"):
        get_dataset("digits-shift", held_out_styles="bold")


# ---- nothing of a shift split reaches a decision -------------------------------------------------
LEAK_METHODS = ["erm", "group-models", "fairsde", "dfr", "group-threshold"]


def flipped_trial(method: str, flip: str, shift: str | None = "site:c"):
    options = {"flip_site": flip, **({"shift": shift} if shift else {})}
    hparams = {"epochs": 4, "batch_size": 64} | ({"hidden": 16} if method != "fairsde" else {})
    cfg = TrialConfig(dataset="tiny-sites", attribute="side", method=method, seed=1, hparams=hparams,
                      dataset_options=options, objective="val/worst_group_acc",
                      selectors=("greedy", "ip-gap") if method != "erm" else ())
    epochs: list = []
    result = run_trial(cfg, device="cpu", on_epoch=lambda epoch, values: epochs.append((epoch, values)))
    result.notes["epochs"] = epochs  # the validation objective of every epoch: what early stopping chose from
    return result


@pytest.mark.parametrize("method", LEAK_METHODS)
def test_flipping_a_shift_splits_labels_changes_no_decision(testkit, method):
    clean, flipped = flipped_trial(method, ""), flipped_trial(method, "c")
    for r in (clean, flipped):
        assert set(r.predictions["split"]) == {"val", "test", "shift:c"}
    decided = lambda r: r.predictions[r.predictions["split"] != "shift:c"]  # noqa: E731
    pd.testing.assert_frame_equal(decided(clean), decided(flipped))  # every in-domain score, bit for bit
    assert clean.notes["epochs"] == flipped.notes["epochs"]
    assert clean.cost.get("best_epoch") == flipped.cost.get("best_epoch")
    assert clean.notes["hparams"] == flipped.notes["hparams"]
    assert {s: v["use_expert"] for s, v in clean.notes["selection"].items()} == \
           {s: v["use_expert"] for s, v in flipped.notes["selection"].items()}
    in_domain = {k: v for k, v in clean.metrics.items() if not k.startswith("shift:")}
    assert in_domain == {k: v for k, v in flipped.metrics.items() if not k.startswith("shift:")}
    # The flip did reach the shift split: its accuracy is the complement.
    primary = "model" if method == "erm" else R.selected("greedy")
    acc, flipped_acc = clean.metrics[f"shift:c/{primary}/acc"], flipped.metrics[f"shift:c/{primary}/acc"]
    assert acc + flipped_acc == pytest.approx(1.0, abs=1e-6) and acc != flipped_acc


def test_the_same_flip_in_domain_does_change_training(testkit):
    """The control: without the shift option site c trains, so its flipped labels change the model."""
    clean, flipped = flipped_trial("erm", "", shift=None), flipped_trial("erm", "c", shift=None)
    val = lambda r: r.predictions[r.predictions["split"] == "val"]  # noqa: E731
    assert not np.allclose(P.proba(val(clean), "model"), P.proba(val(flipped), "model"))


def test_compose_scores_shift_splits_with_the_in_domain_choice(testkit):
    r = flipped_trial("group-models", "")
    method_preds = r.predictions[[c for c in r.predictions.columns if not c.startswith(("proba/erm/", "proba/sel"))]]
    erm_preds = r.predictions[list(P.KEY_COLUMNS)].copy()
    for c in [c for c in r.predictions.columns if c.startswith("proba/erm/")]:
        erm_preds[c.replace("proba/erm/", "proba/model/")] = r.predictions[c]
    composed, report = compose(method_preds, erm_preds, ["greedy"])
    use = np.array([report["greedy"]["use_expert"][g] for g in P.group_names(composed)])
    shift = composed[composed["split"] == "shift:c"]
    mixed = np.where(use[shift["group_id"].to_numpy()][:, None], P.proba(shift, "experts"), P.proba(shift, "erm"))
    assert np.allclose(P.proba(shift, "selected:greedy"), mixed, atol=1e-6)
    assert set(report["greedy"]["no_harm"]) == {"val", "test", "shift:c"}
    assert set(report["greedy"]["shift:c"]) == {"expert", "erm", "selected"}


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------
def _no_class_file(tmp_path) -> str:
    """german's own split, with every validation row of class 0 moved to a shift split."""
    table = get_dataset("german").load(0).table
    split = table["split"].to_numpy(object).copy()
    split[(split == "val") & (table["y"].to_numpy() == 0)] = "shift:bad-val"
    path = tmp_path / "split.csv"
    pd.DataFrame({"sample_id": table["sample_id"], "split": split}).to_csv(path, index=False)
    return str(path)


def _split_file(tmp_path, kind: str) -> str:
    return {"collision": _collision_file, "no-class": _no_class_file}[kind](tmp_path)


def _collision_file(tmp_path) -> str:
    ids = get_dataset("german").load(0).table["sample_id"]
    split = np.where(np.arange(len(ids)) % 5 == 0, "val", "train").astype(object)
    split[np.arange(len(ids)) % 5 == 1] = "test"
    split[:10] = "shift:A43"
    path = tmp_path / "split.csv"
    pd.DataFrame({"sample_id": ids, "split": split}).to_csv(path, index=False)
    return str(path)


BAD = [  # (options, attribute, the one line's words)
    (["shift=nationality:A201"], "sex", "german: shift: unknown column 'nationality'; allowed: foreign_worker, "),
    (["shift=personal_status:A92"], "sex", "column 'personal_status' is a sensitive attribute"),
    (["shift=credit:1"], "sex", "column 'credit' is the target"),
    (["shift=foreign_worker:A203"], "sex", "shift value 'A203' is not in column 'foreign_worker'; its values: A201, A202"),
    (["shift=foreign_worker:A201"], "sex+age", "group 'Female x under-25' of sex+age has no val rows once the shift "
                                               "split shift:A201 is held out"),
    (["split_file={no-class}"], "sex", "german: the shift split shift:bad-val leaves class 0 with no val rows"),
    (["shift=purpose:A43", "split_file={collision}"], "sex",
     "german: the split file and shift value 'A43' both give split shift:A43; give each shift a distinct name"),
    (["shift=purpose:A4 3,A4_3"], "sex", "german: shift: value 'A4 3' and value 'A4_3' both give split shift:A4_3"),
]


def _with_file(option: str, tmp_path) -> str:
    """`split_file={kind}` with the file of that kind written; other options as they are."""
    key, _, value = option.partition("=")
    return f"{key}={_split_file(tmp_path, value[1:-1])}" if key == "split_file" else option


@pytest.mark.parametrize("options, attribute, message", BAD)
def test_noharm_trial_refuses_a_bad_shift_and_writes_nothing(tmp_path, capsys, options, attribute, message):
    out = tmp_path / "run"
    opts = [_with_file(o, tmp_path) for o in options]
    code = main(["trial", "--dataset", "german", "--attribute", attribute, "--method", "erm", "--quiet",
                 "--set", "epochs=1", "--out", str(out), *[a for o in opts for a in ("--option", o)]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists() and {p.name for p in tmp_path.iterdir()} <= {"split.csv"}


@pytest.mark.parametrize("options, attribute, message", BAD)
def test_noharm_run_refuses_a_bad_shift_before_creating_anything(tmp_path, capsys, options, attribute, message):
    from tests.plugins import write_suite

    opts = dict(_with_file(o, tmp_path).split("=", 1) for o in options)
    suite = write_suite(tmp_path / "s.yaml", name="s", seeds=[0, 1], methods=["erm"], hparams={"epochs": 1},
                        datasets=[{"name": "german", "attributes": [attribute], "options": opts}])
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith(f"noharm: error: {suite}: datasets[0].options: german:") or \
        err.startswith(f"noharm: error: {suite}: dataset german:"), err
    assert err.count("\n") == 1 and not out.exists()


def test_a_shift_split_name_outside_the_record_alphabet_is_refused(testkit, tmp_path):
    path = tmp_path / "split.csv"
    pd.DataFrame({"sample_id": [str(i) for i in range(600)],
                  "split": ["shift:a/b" if i < 10 else "train" for i in range(600)]}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"split 'shift:a/b' on 10 row\(s\) is not one of train, val, test or "
                                           r"shift:<name> \(letters, digits, _ . -\)"):
        get_dataset("tiny-blobs", split_file=str(path)).load(0)


def test_a_suite_entry_declares_its_shift_and_the_driver_checks_it_on_the_data(tmp_path):
    from noharm.bench.sweep.suite import check_files, load_suite
    from tests.plugins import write_suite

    suite = load_suite(write_suite(tmp_path / "s.yaml", name="s", seeds=[0], methods=["erm"],
                                   datasets=[{"name": "adult", "attributes": ["sex"],
                                              "shift": {"native-country": ["Mexico", "Philippines"]}}]))
    assert suite.datasets[0].resolved_options["shift"] == {"native-country": ["Mexico", "Philippines"]}
    check_files(suite)  # the values exist and every group keeps train and val rows
    bundle = get_dataset("adult", **suite.datasets[0].resolved_options).load(0)
    assert bundle.shift_splits == ["shift:Mexico", "shift:Philippines"]
    check_requested_shifts(get_dataset("adult"), ["sex"], [0])  # nothing asked: nothing loaded, no error


# ---- what a trial writes -------------------------------------------------------------------------
def test_noharm_trial_out_holds_the_shift_rows_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["trial", "--dataset", "german", "--attribute", "sex", "--method", "erm", "--quiet",
                 "--set", "epochs=2", "--option", "shift=job:A171,A174", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "shift:A171 accuracy" in text and "shift:A174 AUC" in text
    preds = pd.read_parquet(out / "predictions.parquet")
    assert preds["split"].value_counts().to_dict()["shift:A171"] == 22
    metrics = json.loads((out / "metrics.json").read_text())
    assert "shift:A174/model/acc/group:Female" in metrics["metrics"]
    assert set(metrics["notes"]["group_counts"]["Female"]) == {"train", "val", "test", "shift:A171", "shift:A174"}


# ---- stress keeps to validation and test ---------------------------------------------------------
def test_stress_ignores_shift_rows(tmp_path):
    from tests.test_stress_cli import SMALL, write_run

    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    tables = []
    for name, extra in (("plain", 0), ("shifted", 300)):
        runs = [write_run(tmp_path / name / "m", "decoupled", shift=0.05), write_run(tmp_path / name / "e", "erm")]
        for folder in runs:  # the same predictions plus out-of-domain rows that stress must not read
            preds = pd.read_parquet(folder / "predictions.parquet")
            more = preds.sample(extra, random_state=0).assign(split="shift:far", y=lambda d: 1 - d["y"])
            more["sample_id"] = "far-" + more["sample_id"]
            pd.concat([preds, more], ignore_index=True).to_parquet(folder / "predictions.parquet")
        assert main(["stress", "--run", str(runs[0]), "--erm", str(runs[1]), "--suite", str(suite), "--quiet"]) == 0
        tables.append(pd.read_parquet(runs[0] / "stress" / "stress.parquet"))
    assert len(tables[0]) == 12
    pd.testing.assert_frame_equal(tables[0], tables[1])
