"""--data-root means one thing in every command: a dataset's own folder, or a parent holding `<name>/`.

`noharm trial`, `noharm datasets check` and `noharm run` are each run with both forms on fixture copies of
the publishers' layouts (compas and CelebA) and must find the same folder; a root holding neither fails
with one line naming every path tried. Embedded datasets ignore the root.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from noharm.bench.cli import main
from noharm.bench.sweep.suite import check_files, parse_suite
from noharm.datasets import DatasetError, get_dataset, resolve_root
from tests import real_layouts as R
from tests import tabular_layouts as T
from tests.plugins import env_with_site, write_suite

FORMS = ("parent", "own")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data root laid out as the README asks: one subfolder per dataset name."""
    parent = tmp_path_factory.mktemp("data")
    T.write_compas(parent / "compas")
    R.write_celeba(parent / "celeba")
    return parent


def root_of(data, form: str, name: str = "compas") -> str:
    return str(data if form == "parent" else data / name)


@pytest.mark.parametrize("form", FORMS)
def test_resolve_root_finds_the_dataset_folder_from_either_form(data, form):
    assert resolve_root("compas", root_of(data, form)) == str(data / "compas")
    assert resolve_root("celeba", root_of(data, form, "celeba")) == str(data / "celeba")
    assert get_dataset("compas", root=root_of(data, form)).root == str(data / "compas")
    assert resolve_root("adult", root_of(data, form)) is None  # embedded: the root is not read


@pytest.mark.parametrize("form", FORMS)
def test_datasets_check_takes_either_form(data, form, tmp_path, capsys):
    assert main(["datasets", "check", "compas", "--data-root", root_of(data, form), "--attribute", "race"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compas: 96 samples") and f"note: data root: {data / 'compas'}\n" in out
    argv = ["datasets", "check", "celeba", "--data-root", root_of(data, form, "celeba"), "--attribute", "Male",
            "--option", "image_size=16", "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("celeba: 40 samples") and f"note: data root: {data / 'celeba'}\n" in out


def test_datasets_check_keeps_the_old_root_spelling(data, capsys):
    """`--root`, the old name of --data-root, still works (hidden from --help) and means the same."""
    assert main(["datasets", "check", "compas", "--root", str(data), "--attribute", "race"]) == 0
    assert f"note: data root: {data / 'compas'}\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["datasets", "check", "--help"])
    helptext = capsys.readouterr().out
    assert "--data-root" in helptext and "--root " not in helptext


@pytest.mark.parametrize("form", FORMS)
def test_trial_takes_either_form_and_records_the_folder_found(data, form, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["trial", "--dataset", "compas", "--attribute", "race", "--method", "erm", "--set", "epochs=1",
                 "--quiet", "--data-root", root_of(data, form), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_options"]["root"] == str(data / "compas")
    assert "compas (race), seed 0" in capsys.readouterr().out


def test_trial_of_an_embedded_dataset_ignores_the_root(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["trial", "--dataset", "german", "--attribute", "age", "--method", "erm", "--set", "epochs=1",
                 "--quiet", "--data-root", str(tmp_path / "no" / "such" / "folder"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "root" not in json.loads((out / "config.json").read_text())["dataset_options"]
    assert main(["datasets", "check", "german", "--data-root", str(tmp_path / "nowhere"), "--attribute", "age"]) == 0
    assert "note: german is embedded: the data root is not read" in capsys.readouterr().out


@pytest.mark.parametrize("form", FORMS)
def test_suite_roots_resolve_from_either_form(data, form, tmp_path):
    raw = {"name": "roots", "datasets": [{"name": "compas", "attributes": ["race"]}], "methods": ["erm"],
           "seeds": [0]}
    suite = parse_suite(raw, data_root=root_of(data, form))
    assert suite.datasets[0].options["root"] == str(data / "compas")
    check_files(suite)  # no error: the files are where the resolved root says
    # A suite's own root, relative to the data root, takes both forms too.
    T.write_compas(tmp_path / "mine" / "compas")
    rel = "mine" if form == "parent" else "mine/compas"
    raw["datasets"][0]["options"] = {"root": rel}
    suite = parse_suite(raw, data_root=tmp_path)
    assert suite.datasets[0].options["root"] == str(tmp_path / "mine" / "compas")


def test_run_takes_either_form_and_both_give_the_same_trial(data, tmp_path):
    """The parent form runs the trial; the own-folder form finds it already FINISHED (same key): one run."""
    suite = write_suite(tmp_path / "roots.yaml", name="roots", datasets=[{"name": "compas", "attributes": ["race"]}],
                        methods=["erm"], hparams={"epochs": 1}, seeds=[0], search={"trials": 0}, selectors=[])
    out = tmp_path / "out"
    env = env_with_site(tmp_path)  # loopback-only local Ray, quiet tools
    for form in FORMS:
        proc = subprocess.run([sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--quiet",
                               "--data-root", root_of(data, form), "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    with sqlite3.connect(out / "mlflow.db") as db:
        runs = db.execute("SELECT status FROM runs").fetchall()
        roots = db.execute("SELECT value FROM params WHERE key = 'dataset.root'").fetchall()
    assert runs == [("FINISHED",)] and roots == [(str(data / "compas"),)]


# ---- a root that holds neither: one line naming every path tried, in every command ----------------------

def error_cases(empty):
    return {
        "trial": ["trial", "--dataset", "compas", "--attribute", "race", "--method", "erm", "--data-root", str(empty)],
        "check": ["datasets", "check", "compas", "--data-root", str(empty)],
    }


@pytest.mark.parametrize("command", ["trial", "check", "run"])
def test_a_root_holding_neither_form_names_both_paths(tmp_path, capsys, command):
    empty = tmp_path / "empty"
    (empty / "compas").mkdir(parents=True)  # the parent form's folder exists, without the file
    out = tmp_path / "out"
    if command == "run":
        suite = write_suite(tmp_path / "s.yaml", name="s", datasets=[{"name": "compas", "attributes": ["race"]}],
                            methods=["erm"], seeds=[0])
        argv = ["run", str(suite), "--data-root", str(empty), "--out", str(out)]
    else:
        argv = error_cases(empty)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    # The likelier folder (compas/ exists) first, with its hint; then the root itself.
    assert (f"compas: missing {empty / 'compas' / 'compas-scores-two-years.csv'} or "
            f"{empty / 'compas' / 'compas-analysis' / 'compas-scores-two-years.csv'}; get it from") in err
    assert f"(also tried {empty}: missing {empty / 'compas-scores-two-years.csv'} or " in err
    assert not out.exists()


def test_a_missing_root_says_so_and_names_both_paths(tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        get_dataset("compas", root=str(nowhere))
    assert str(err.value) == (f"compas: data root {nowhere} does not exist or is not a folder "
                              f"(also tried {nowhere / 'compas'})")
    assert main(["trial", "--dataset", "compas", "--attribute", "race", "--method", "erm",
                 "--data-root", str(nowhere)]) == 2
    assert str(err.value) in capsys.readouterr().err


def test_an_option_error_wins_over_a_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="compas: unknown races 'everyone'; choose one of: black-white, all"):
        get_dataset("compas", root=str(tmp_path / "nowhere"), races="everyone")


def test_a_suite_without_the_files_names_both_paths_before_anything_runs(tmp_path):
    raw = {"name": "roots", "datasets": [{"name": "compas", "attributes": ["race"]}], "methods": ["erm"],
           "seeds": [0]}
    suite = parse_suite(raw, data_root=tmp_path)
    assert suite.datasets[0].options["root"] == str(tmp_path)  # kept as given: nothing found to resolve to
    with pytest.raises(DatasetError, match=r"dataset compas: compas: missing .* \(also tried .*compas: not a folder\)"):
        check_files(suite)
    assert os.listdir(tmp_path) == []
