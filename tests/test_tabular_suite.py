"""bench/suites/tabular.yaml: valid against the registries, and a missing data root fails before anything runs."""

from __future__ import annotations

from pathlib import Path

from noharm.bench.cli import main
from noharm.bench.sweep.suite import load_suite
from tests import tabular_layouts as T

SUITE = Path(__file__).resolve().parents[1] / "bench" / "suites" / "tabular.yaml"


def test_tabular_suite_is_valid(tmp_path):
    from noharm.bench.sweep import grid
    from noharm.methods import METHODS

    T.write_compas(tmp_path / "compas")
    T.write_bank(tmp_path / "bank")
    suite = load_suite(SUITE, data_root=tmp_path)
    attrs = {d.name: d.attributes for d in suite.datasets}
    assert attrs == {"adult": ["sex", "race", "sex+race"], "german": ["age", "sex", "sex+age"],
                     "compas": ["race", "sex", "race+sex"], "bank": ["age", "marital"]}
    roots = {d.name: d.resolved_options.get("root") for d in suite.datasets}
    assert roots == {"adult": None, "german": None, "compas": str(tmp_path / "compas"), "bank": str(tmp_path / "bank")}
    assert [m.name for m in suite.methods] == METHODS.names() and suite.seeds == [0, 1, 2]
    assert len(grid.cells(suite)) == len(METHODS.names()) * 11


def test_tabular_suite_without_the_files_fails_in_a_second(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(SUITE), "--data-root", str(tmp_path / "data"), "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"compas: data root {tmp_path / 'data'} does not exist or is not a folder (also tried " in err[0]
    (tmp_path / "data" / "compas").mkdir(parents=True)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"compas: missing {tmp_path / 'data' / 'compas' / 'compas-scores-two-years.csv'} or " in err[0]
    assert not out.exists()
