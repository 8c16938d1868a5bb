"""A database tracking URI whose driver is not installed: one line naming the pip extra that installs it, exit 2,
before anything is created (`run`, `report` and `stress` alike); SQL Server is refused in one line."""

from __future__ import annotations

import sys

import pytest

from noharm.bench.cli import main
from tests.plugins import write_suite

POSTGRES_FIX = "which is not installed; pip install 'noharm[postgres]'"
# (case id, tracking URI, module made unimportable, expected end of the error line)
CASES = [
    ("postgresql", "postgresql://mlflow@127.0.0.1:5432/mlflow", "psycopg",
     f"needs the database driver 'psycopg', {POSTGRES_FIX}\n"),
    ("postgresql+psycopg", "postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow", "psycopg",
     f"needs the database driver 'psycopg', {POSTGRES_FIX}\n"),
    ("postgresql+psycopg2", "postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow", "psycopg2",
     f"needs the database driver 'psycopg2', {POSTGRES_FIX} and write the URI as postgresql+psycopg://...\n"),
    ("mysql+pymysql", "mysql+pymysql://mlflow@127.0.0.1:3306/mlflow", "pymysql",
     "needs the database driver 'pymysql', which is not installed; pip install 'noharm[mysql]'\n"),
    ("mysql", "mysql://mlflow@127.0.0.1:3306/mlflow", "MySQLdb",
     "needs the database driver 'MySQLdb', which is not installed; pip install 'noharm[mysql]' and write the URI "
     "as mysql+pymysql://...\n"),
]


def suite_file(tmp_path):
    return write_suite(tmp_path / "suite.yaml", name="drv", datasets=[{"name": "adult", "attributes": ["sex"]}],
                       methods=["erm"], seeds=[0], hparams={"epochs": 1})


@pytest.mark.parametrize("uri, module, ending", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_without_the_driver_names_the_extra(uri, module, ending, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra looks like
    out = tmp_path / "out"
    assert main(["run", str(suite_file(tmp_path)), "--out", str(out), "--tracking-uri", uri, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"noharm: error: tracking URI {uri!r} {ending}"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["suite.yaml"]


@pytest.mark.parametrize("command", [["report", "--out", "{tmp}/report"], ["stress"]], ids=["report", "stress"])
def test_readers_without_the_driver_name_the_extra(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    uri = "postgresql://mlflow@127.0.0.1:5432/mlflow"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command]
    assert main([*argv, "--experiment", "e", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err == f"noharm: error: tracking URI {uri!r} needs the database driver 'psycopg', {POSTGRES_FIX}\n"
    assert not list(tmp_path.iterdir())


def test_sql_server_is_refused_in_one_line(tmp_path, capsys):
    uri = "mssql+pyodbc://mlflow@127.0.0.1/mlflow"
    assert main(["run", str(suite_file(tmp_path)), "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err == (f"noharm: error: tracking URI {uri!r}: noharm does not open SQL Server stores "
                                       "directly; run `mlflow server --backend-store-uri` on it and give "
                                       "http://HOST:PORT\n")
    assert not (tmp_path / "out").exists()


def test_a_malformed_database_uri_is_one_line(tmp_path, capsys):
    uri = "postgresql+psycopg://mlflow@127.0.0.1:port/mlflow"
    assert main(["run", str(suite_file(tmp_path)), "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"noharm: error: tracking URI {uri!r} is not a database URL (") and err.count("\n") == 1
    assert err.endswith("write it as postgresql+psycopg://USER@HOST/DATABASE\n")
