"""Suite files: validation (one clear line per mistake), grid expansion and trial keys. No Ray here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from noharm.bench.errors import ConfigError
from noharm.bench.sweep.suite import load_suite, parse_suite

SUITES = Path(__file__).resolve().parents[1] / "bench" / "suites"
GOOD = {
    "name": "t",
    "datasets": [{"name": "adult", "attributes": ["sex", "sex+race"]},
                 {"name": "digits-shift", "attributes": ["style"], "hparams": {"backbone": "cnn"}}],
    "methods": ["erm", {"decoupled": {"lr": 0.01}}],
    "hparams": {"epochs": 1},
    "seeds": [0, 1],
    "search": {"trials": 2, "objective": "val/worst_group_auc"},
    "selectors": ["greedy", "ip-gap"],
}


def write(tmp_path: Path, text_or_obj) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text_or_obj if isinstance(text_or_obj, str) else yaml.safe_dump(text_or_obj, sort_keys=False))
    return path


def mistake(tmp_path: Path, **changes) -> str:
    """Load GOOD with `changes` (None deletes a field); return the ConfigError message."""
    raw = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    return str(info.value)


def test_good_suite_loads(tmp_path):
    suite = load_suite(write(tmp_path, GOOD))
    assert suite.name == "t" and suite.seeds == [0, 1]
    assert [m.name for m in suite.methods] == ["erm", "decoupled"]
    assert suite.method("decoupled").hparams == {"lr": 0.01}
    assert suite.search.trials == 2 and suite.selectors == ["greedy", "ip-gap"]


# ---- one test per mistake: the message names the file and the field, one line each ----------------

def test_unknown_top_level_field(tmp_path):
    msg = mistake(tmp_path, seedz=[0])
    assert msg.count("\n") == 0
    assert "suite.yaml: seedz: unknown field; valid fields: name, datasets" in msg


def test_unknown_nested_field(tmp_path):
    msg = mistake(tmp_path, search={"trials": 2, "objectiv": "acc"})
    assert "suite.yaml: search.objectiv: unknown field; valid fields: trials, objective, seed" in msg


def test_unknown_method(tmp_path):
    msg = mistake(tmp_path, methods=["erm", "fairsdee"])
    assert "suite.yaml: methods[1]: unknown method 'fairsdee'; choose one of:" in msg and "fairsde" in msg


def test_unknown_dataset(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adultt", "attributes": ["sex"]}])
    assert "suite.yaml: datasets[0].name: unknown dataset 'adultt'; choose one of:" in msg


def test_unknown_attribute(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adult", "attributes": ["sex", "gender"]}])
    assert "suite.yaml: datasets[0].attributes[1]: unknown attribute 'gender' of dataset 'adult'" in msg


def test_unknown_attribute_inside_intersection(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adult", "attributes": ["sex+colour"]}])
    assert "datasets[0].attributes[0]: unknown attribute 'colour'" in msg


def test_empty_datasets(tmp_path):
    msg = mistake(tmp_path, datasets=[])
    assert "suite.yaml: datasets: empty grid; list at least one dataset" in msg


def test_empty_methods(tmp_path):
    msg = mistake(tmp_path, methods=[])
    assert "suite.yaml: methods: empty grid" in msg


def test_empty_seeds(tmp_path):
    msg = mistake(tmp_path, seeds=[])
    assert "suite.yaml: seeds: empty grid" in msg


def test_empty_attributes(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adult", "attributes": []}])
    assert "suite.yaml: datasets[0].attributes:" in msg and "at least 1 item" in msg


def test_missing_methods(tmp_path):
    msg = mistake(tmp_path, methods=None)
    assert "suite.yaml: methods: missing; list method names or write `methods: all`" in msg


def test_bad_type_seeds(tmp_path):
    msg = mistake(tmp_path, seeds=["zero"])
    assert "suite.yaml: seeds[0]:" in msg and "integer" in msg and "'zero'" in msg


def test_bad_type_trials(tmp_path):
    msg = mistake(tmp_path, search={"trials": "many"})
    assert "suite.yaml: search.trials:" in msg and "'many'" in msg


def test_negative_cpu(tmp_path):
    msg = mistake(tmp_path, resources={"cpu": 0})
    assert "suite.yaml: resources.cpu: Input should be greater than 0" in msg


def test_repeated_seed(tmp_path):
    msg = mistake(tmp_path, seeds=[0, 0])
    assert "suite.yaml: seeds: seeds repeat a value: [0, 0]" in msg


def test_bad_suite_name(tmp_path):
    msg = mistake(tmp_path, name="my suite!")
    assert "suite.yaml: name: must be letters, digits" in msg


def test_unknown_method_hparam(tmp_path):
    msg = mistake(tmp_path, methods=[{"erm": {"lrr": 0.1}}])
    assert "suite.yaml: methods[0].erm: unknown hparam 'lrr' of method 'erm'; valid:" in msg


def test_bad_method_hparam_value(tmp_path):
    msg = mistake(tmp_path, methods=[{"erm": {"epochs": "ten"}}])
    assert "suite.yaml: methods[0].erm: hparam 'epochs' takes an integer, got 'ten'" in msg


def test_shared_hparam_no_method_declares(tmp_path):
    msg = mistake(tmp_path, hparams={"epochz": 1})
    assert "suite.yaml: hparams.epochz: no listed method declares hparam 'epochz'" in msg


def test_dataset_hparam_bad_value(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "digits-shift", "attributes": ["style"],
                                       "hparams": {"backbone": "vgg"}}])
    assert "suite.yaml: datasets[0].hparams.backbone: hparam 'backbone' takes one of" in msg


def test_unknown_objective(tmp_path):
    msg = mistake(tmp_path, search={"trials": 1, "objective": "val/worst_group_f1"})
    assert "suite.yaml: search.objective: unknown objective 'val/worst_group_f1'" in msg


def test_unknown_selector(tmp_path):
    msg = mistake(tmp_path, selectors=["greedy", "oracle"])
    assert "suite.yaml: selectors[1]: unknown selector 'oracle'; choose from:" in msg


def test_unknown_selection_metric(tmp_path):
    msg = mistake(tmp_path, selection={"metric": "f1"})
    assert "suite.yaml: selection.metric:" in msg and "'accuracy' or 'auc'" in msg


def test_search_attribute_not_listed(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adult", "attributes": ["sex"], "search": ["race"]}])
    assert "suite.yaml: datasets[0].search[0]: 'race' is not one of this entry's attributes (sex)" in msg


def test_duplicate_dataset(tmp_path):
    entry = {"name": "adult", "attributes": ["sex"]}
    msg = mistake(tmp_path, datasets=[entry, entry])
    assert "suite.yaml: datasets[1]: dataset 'adult' is listed twice (also datasets[0])" in msg


def test_bad_dataset_option(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "digits-shift", "attributes": ["style"], "options": {"image_size": 4}}])
    assert "suite.yaml: datasets[0].options: digits-shift: image_size must be between 8 and 256, got 4" in msg


def test_unknown_dataset_option(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adult", "attributes": ["sex"], "options": {"colour": 1}}])
    assert "suite.yaml: datasets[0].options: unknown option(s) colour for dataset 'adult'" in msg


def test_unknown_target(tmp_path):
    msg = mistake(tmp_path, datasets=[{"name": "adult", "attributes": ["sex"], "target": "wealth"}])
    assert "suite.yaml: datasets[0].options: unknown target 'wealth' for dataset 'adult'" in msg


def test_search_seed_not_a_seed(tmp_path):
    msg = mistake(tmp_path, search={"trials": 1, "seed": 7})
    assert "suite.yaml: search.seed: 7 is not one of seeds [0, 1]" in msg


def test_method_item_malformed(tmp_path):
    msg = mistake(tmp_path, methods=[["erm"]])
    assert "suite.yaml: methods[0]: expected a method name or {name: {hparam: value}}" in msg


def test_several_mistakes_one_line_each(tmp_path):
    msg = mistake(tmp_path, methods=["erm", "nope"], selectors=["oracle"], hparams={"epochz": 1})
    lines = msg.splitlines()
    assert len(lines) == 3 and all(line.startswith(str(tmp_path / "suite.yaml")) for line in lines)


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "name: t\ndatasets: [\n  {name: adult\n")
    with pytest.raises(ConfigError, match=r"suite.yaml: line \d+: not valid YAML"):
        load_suite(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="a suite is a YAML mapping"):
        load_suite(write(tmp_path, "- just\n- a list\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="suite file .* not found"):
        load_suite(tmp_path / "nope.yaml")


def test_cli_bad_suite_exits_2_with_one_line(tmp_path, capsys):
    from noharm.bench.cli import main

    path = write(tmp_path, {**GOOD, "methods": ["erm", "nope"]})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods[1]: unknown method 'nope'" in err[0]
    assert not (tmp_path / "out").exists()


# ---- methods: all, overrides, roots -----------------------------------------------------------------

def test_methods_all_and_overrides(tmp_path):
    from noharm.methods import METHODS

    suite = parse_suite({**GOOD, "methods": ["all", {"decoupled": {"lr": 0.05}}]})
    assert [m.name for m in suite.methods] == METHODS.names()
    assert suite.method("decoupled").hparams == {"lr": 0.05}
    assert [m.name for m in parse_suite({**GOOD, "methods": "all"}).methods] == METHODS.names()


def test_relative_root_is_anchored_at_data_root(tmp_path):
    from tests import real_layouts as R

    R.write_ham10000(tmp_path / "skin")
    R.write_celeba(tmp_path / "celeba")
    raw = {**GOOD, "datasets": [{"name": "ham10000", "attributes": ["sex"], "options": {"root": "skin"}},
                                {"name": "celeba", "attributes": ["Male"]}]}
    suite = parse_suite(raw, data_root=tmp_path)
    assert suite.datasets[0].options["root"] == str(tmp_path / "skin")
    assert suite.datasets[1].options["root"] == str(tmp_path / "celeba")


# ---- the shipped suites ----------------------------------------------------------------------------

def test_default_suite_is_valid_and_embedded():
    from noharm.bench.sweep import grid
    from noharm.datasets import DATASETS
    from noharm.methods import METHODS

    suite = load_suite(SUITES / "default.yaml")
    assert {d.name for d in suite.datasets} == {"adult", "digits-shift"}
    assert not any(DATASETS.get(d.name).needs_root for d in suite.datasets)
    assert [m.name for m in suite.methods] == METHODS.names()  # methods: all
    assert len(suite.seeds) == 3 and suite.selectors == ["greedy", "ip-gap", "ip-utility"]
    digits = next(d for d in suite.datasets if d.name == "digits-shift")
    assert digits.hparams["backbone"] == "cnn"
    assert 0 < suite.search.trials <= 5
    cells = grid.cells(suite)
    assert len(cells) == len(METHODS.names()) * 4


PAPER_DATASETS = ("ham10000", "mimic-cxr", "harvard-gf", "celeba", "utkface")


def test_paper_suite_loaders_are_registered():
    """The paper suite's loaders ship with noharm: a dropped or renamed one fails here, it is never skipped."""
    from noharm.datasets import DATASETS

    raw = yaml.safe_load((SUITES / "paper.yaml").read_text())
    assert {d["name"] for d in raw["datasets"]} == set(PAPER_DATASETS)
    missing = [d for d in PAPER_DATASETS if d not in DATASETS]
    assert not missing, f"paper-suite dataset loaders not registered: {', '.join(missing)}"


def test_paper_suite_validates_against_registries(tmp_path):
    suite = load_suite(SUITES / "paper.yaml", data_root=tmp_path)
    pairs = {(d.name, d.resolved_options.get("target"), a) for d in suite.datasets for a in d.attributes}
    assert ("ham10000", None, "sex") in pairs and ("ham10000", None, "age") in pairs
    assert ("celeba", "Smiling", "Male") in pairs and ("celeba", "Straight_Hair", "Male") in pairs
    assert ("utkface", "gender", "race") in pairs and ("utkface", "race", "gender") in pairs
    assert {("mimic-cxr", None, "race"), ("mimic-cxr", None, "sex")} <= pairs
    assert {("harvard-gf", None, "race"), ("harvard-gf", None, "gender")} <= pairs
    assert suite.hparams["epochs"] == 50 and suite.hparams["batch_size"] == 256
    assert suite.hparams["optimizer"] == "sgd" and suite.hparams["backbone"] == "resnet18"
    sizes = {d.name: d.options.get("image_size") for d in suite.datasets}
    assert sizes["ham10000"] == 224 and sizes["celeba"] == 64 and sizes["utkface"] == 64


def test_paper_suite_with_empty_data_root_fails_before_starting(tmp_path, capsys):
    from noharm.bench.cli import main

    out = tmp_path / "out"
    code = main(["run", str(SUITES / "paper.yaml"), "--data-root", str(tmp_path / "data"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    first = load_suite(SUITES / "paper.yaml").datasets[0].name
    assert str(tmp_path / "data" / first) in err[0]
    assert not out.exists()  # nothing started, nothing written


# ---- grid ------------------------------------------------------------------------------------------

def test_grid_cells_search_sources_and_erm_reference():
    from noharm.bench.sweep import grid

    raw = {**GOOD, "methods": ["decoupled"],
           "datasets": [{"name": "adult", "attributes": ["sex", "race", "sex+race"], "search": ["race"]}]}
    suite = parse_suite(raw)
    cells = {c.id: c for c in grid.cells(suite)}
    # ERM joins as the selectors' reference even though not listed.
    assert set(cells) == {f"adult/{a}/{m}" for a in ("sex", "race", "sex+race") for m in ("decoupled", "erm")}
    assert cells["adult/race/decoupled"].searched and not cells["adult/sex/decoupled"].searched
    assert cells["adult/sex/decoupled"].search_from == "adult/race/decoupled"
    assert cells["adult/sex+race/erm"].search_from == "adult/race/erm"
    assert grid.composed_methods(suite) == ["decoupled"]
    counts = grid.count_trials(suite)
    assert counts == {"search": 2 * 2, "evaluate": 6 * 2, "compose": 3 * 2}


def test_grid_fixed_overrides_precedence_and_no_search_when_all_fixed():
    from noharm.bench.sweep import grid

    raw = {**GOOD, "hparams": {"epochs": 1, "lr": 0.1},
           "datasets": [{"name": "adult", "attributes": ["sex"], "hparams": {"lr": 0.2, "batch_size": 64}}],
           "methods": [{"erm": {"lr": 0.3, "weight_decay": 0.0, "optimizer": "sgd"}}, "decoupled"], "selectors": []}
    suite = parse_suite(raw)
    cells = {c.method: c for c in grid.cells(suite)}
    assert cells["erm"].fixed == {"epochs": 1, "lr": 0.3, "batch_size": 64, "weight_decay": 0.0, "optimizer": "sgd"}
    assert cells["decoupled"].fixed == {"epochs": 1, "lr": 0.2, "batch_size": 64}
    assert not cells["erm"].searched  # optimizer, lr and weight_decay fixed: nothing left to search
    assert cells["decoupled"].searched
    cfg = grid.trial_config(suite, cells["decoupled"], {"lr": 0.9, "weight_decay": 1e-3}, seed=1)
    assert cfg.hparams["lr"] == 0.2 and cfg.hparams["weight_decay"] == 1e-3 and cfg.hparams["epochs"] == 1
    assert cfg.seed == 1 and cfg.objective == "val/worst_group_auc"


def test_wrap_all_composes_every_method():
    from noharm.bench.sweep import grid

    suite = parse_suite({**GOOD, "methods": ["erm", "decoupled", "groupdro"], "selection": {"wrap": "all"}})
    assert grid.composed_methods(suite) == ["decoupled", "groupdro"]
    assert grid.compose_candidate("decoupled") == "experts" and grid.compose_candidate("groupdro") == "model"
    assert grid.composed_methods(parse_suite({**GOOD, "selectors": []})) == []


# ---- keys ------------------------------------------------------------------------------------------

def test_trial_key_is_stable_and_sensitive():
    from dataclasses import replace

    from noharm.bench.sweep.keys import compose_key, trial_key
    from noharm.bench.trial import TrialConfig

    base = TrialConfig(dataset="adult", attribute="sex", method="erm", seed=0, hparams={"epochs": 2})
    key = trial_key(base)
    assert key == trial_key(replace(base, hparams={"epochs": 2.0}))  # cast through the declaration
    assert trial_key(replace(base, hparams={})) == trial_key(replace(base, hparams={"epochs": 10}))  # default 10
    assert trial_key(replace(base, hparams={"lr": 1e-3, "epochs": 2})) == key  # lr default is 1e-3
    variants = [replace(base, seed=1), replace(base, attribute="race"), replace(base, method="groupdro"),
                replace(base, hparams={"epochs": 3}), replace(base, dataset_options={"val_fraction": 0.3}),
                replace(base, objective="auc"), replace(base, precision="bf16"), replace(base, min_group_size=5)]
    assert len({trial_key(v) for v in variants} | {key}) == len(variants) + 1
    assert len(key) == 20 and key == trial_key(base)
    k1 = compose_key(key, "e" * 20, "greedy", "accuracy", "experts")
    assert k1 != compose_key(key, "e" * 20, "ip-gap", "accuracy", "experts")
    assert k1 != compose_key(key, "f" * 20, "greedy", "accuracy", "experts")


def test_metric_names_are_sanitised_one_way():
    from noharm.analysis.record import metric_name

    assert metric_name("test/model/acc/group:Female x White") == "test/model/acc/group:Female x White"
    assert metric_name("test/model/acc/group:80+") == "test/model/acc/group:80_"
    assert metric_name("val/m/acc/group:a=b,(c)") == "val/m/acc/group:a_b__c_"
    # Segments MLflow would normalise away are replaced too (it refuses such names).
    assert metric_name("test/m//x") == "test/m/_/x" and metric_name("test/./x/..") == "test/_/x/_"
