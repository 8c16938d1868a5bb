"""Fail fast: every bad value and bad environment is one line, exit 2, in seconds, with nothing created.

One table of cases for `noharm run` (suite values, command-line values, tracking stores, dead services),
one for `noharm trial` (the same range declarations, checked by the trial), plus the reader side (`stress`).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from noharm.bench.cli import main
from tests.plugins import free_port, write_suite

BASE = {"name": "ff", "datasets": [{"name": "adult", "attributes": ["sex"]}], "methods": ["erm"], "seeds": [0],
        "hparams": {"epochs": 1}}


def suite_file(tmp_path: Path, **changes) -> Path:
    return write_suite(tmp_path / "suite.yaml", **{**BASE, **changes})


def dead_port() -> int:
    """A loopback port nothing listens on (bound and released: connecting is refused)."""
    return free_port()


def run_cli(argv: list[str], capsys) -> tuple[int, str, float]:
    t0 = time.monotonic()
    code = main(argv)
    return code, capsys.readouterr().err, time.monotonic() - t0


# (case id, suite changes, extra argv, expected fragment). "{port}" becomes a dead port, "{tmp}" tmp_path.
RUN_CASES = [
    ("epochs-0", {"hparams": {"epochs": 0}}, [], "hparams.epochs: hparam 'epochs' must be >= 1, got 0"),
    ("batch-size-0", {"hparams": {"epochs": 1, "batch_size": 0}}, [], "hparam 'batch_size' must be >= 1, got 0"),
    ("lr-0", {"methods": [{"erm": {"lr": 0}}]}, [], "methods[0].erm: hparam 'lr' must be > 0, got 0.0"),
    ("lr-negative", {"hparams": {"epochs": 1, "lr": -0.1}}, [], "hparam 'lr' must be > 0, got -0.1"),
    ("seed-negative", {"seeds": [-1]}, [], "seeds: seeds must be non-negative integers"),
    ("attribute-twice", {"datasets": [{"name": "adult", "attributes": ["sex+sex"]}]}, [],
     "datasets[0].attributes[0]: 'sex+sex' joins 'sex' with itself"),
    ("suite-experiment-empty", {"tracking": {"experiment": ""}}, [], "tracking.experiment: String should have at least"),
    ("device", {}, ["--device", "gpu0"], "unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"),
    ("experiment-empty", {}, ["--experiment", ""], "the MLflow experiment name is empty"),
    ("file-store", {}, ["--tracking-uri", "file:///{tmp}/mlruns"], "is a file store, which MLflow 3 no longer"),
    ("plain-path-store", {}, ["--tracking-uri", "{tmp}/mlruns"], "is a file store"),
    ("store-folder-missing", {}, ["--tracking-uri", "sqlite:///{tmp}/nowhere/mlflow.db"],
     "the folder of tracking store 'sqlite:///{tmp}/nowhere/mlflow.db' does not exist"),
    ("unknown-scheme", {}, ["--tracking-uri", "mongodb://127.0.0.1/x"], "has an unknown scheme 'mongodb:'"),
    ("dead-server", {}, ["--tracking-uri", "http://127.0.0.1:{port}"],
     "MLflow tracking server http://127.0.0.1:{port} is not reachable"),
    ("dead-address", {}, ["--address", "127.0.0.1:{port}"],
     "--address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"),
    ("dead-ray-client", {}, ["--address", "ray://127.0.0.1:{port}"], "no Ray cluster answers at 127.0.0.1:{port}"),
    ("bad-address", {}, ["--address", "127.0.0.1:http"], "expected HOST:PORT, auto or ray://HOST:PORT"),
    ("max-concurrent", {}, ["--max-concurrent", "0"], "--max-concurrent must be at least 1"),
]


@pytest.mark.parametrize("suite_changes, argv, fragment", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_bad_input_is_one_line_exit_2_nothing_created(suite_changes, argv, fragment, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = dead_port()
    fill = lambda s: s.replace("{port}", str(port)).replace("{tmp}", str(tmp_path))  # noqa: E731
    out = tmp_path / "out"
    code, err, seconds = run_cli(["run", str(suite_file(tmp_path, **suite_changes)), "--out", str(out), "--quiet",
                                  *map(fill, argv)], capsys)
    assert code == 2, err
    assert err.startswith("noharm: error: ") and fill(fragment) in err, err
    assert err.count("\n") == 1, err
    assert seconds < 15
    assert not out.exists(), "a failed start left a run folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.yaml"]


def test_address_auto_without_a_cluster(tmp_path, capsys, monkeypatch):
    """`auto` finds what Ray's own lookup finds: nothing (one line saying so), or a stale address (one line
    saying nothing answers there). A live local Ray elsewhere on the machine would be joined: skipped then."""
    from noharm.bench.sweep.preflight import _current_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no address file of another test's cluster
    found = _current_cluster()
    if found is None:
        expected = "--address auto: no Ray cluster is running on this machine"
    else:
        host, _, port = found.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            pytest.skip(f"a Ray cluster is running on this machine at {found} (auto joins it)")
        except OSError:
            expected = f"no Ray cluster answers at {found}"
    out = tmp_path / "out"
    code, err, seconds = run_cli(["run", str(suite_file(tmp_path)), "--out", str(out), "--address", "auto"], capsys)
    assert code == 2 and expected in err, err
    assert err.count("\n") == 1 and seconds < 15 and not out.exists()


def test_address_auto_follows_a_dead_ray_address(tmp_path, capsys, monkeypatch):
    port = dead_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    code, err, seconds = run_cli(["run", str(suite_file(tmp_path)), "--out", str(tmp_path / "out"),
                                  "--address", "auto"], capsys)
    assert code == 2 and f"no Ray cluster answers at 127.0.0.1:{port}" in err
    assert seconds < 15 and not (tmp_path / "out").exists()


def test_ray_client_address_without_ray_client_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)  # what an install without `ray[client]` looks like
    code, err, _ = run_cli(["run", str(suite_file(tmp_path)), "--out", str(tmp_path / "out"),
                            "--address", "ray://127.0.0.1:10001"], capsys)
    assert code == 2 and "Ray Client is not installed; pip install 'ray[client]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_silent_address_times_out_in_seconds():
    """A port that accepts nothing and refuses nothing (a listener with a full backlog stands in for a
    firewalled host) still fails within the connect deadline."""
    import noharm.bench.sweep.preflight as preflight

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the backlog so further connects hang instead of completing.
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        t0 = time.monotonic()
        try:
            preflight.check_ray_address(f"127.0.0.1:{port}", timeout=1.0)
            connected = True
        except Exception as exc:  # ConfigError when the connect timed out
            connected = False
            assert "timed out" in str(exc) or "no Ray cluster answers" in str(exc)
        for s in fillers:
            s.close()
    assert time.monotonic() - t0 < 5
    if connected:
        pytest.skip("the kernel accepted the connection despite the full backlog")


def test_duplicate_key_and_non_utf8_suite(tmp_path, capsys):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: ff\nseeds: [0]\ndatasets: [{name: adult, attributes: [sex]}]\nmethods: [erm]\nseeds: [1]\n")
    code, err, _ = run_cli(["run", str(dup), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{dup}: line 5: not valid YAML (key 'seeds' is repeated (first on line 2)" in err
    flow = tmp_path / "flow.yaml"
    flow.write_text("name: ff\nseeds: [0]\ndatasets: [{name: adult, attributes: [sex], name: adult}]\nmethods: [erm]\n")
    code, err, _ = run_cli(["run", str(flow), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "key 'name' is repeated" in err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: ff  # caf\xe9\n".encode("latin-1"))
    code, err, _ = run_cli(["run", str(latin), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{latin}: not UTF-8 text (byte 15); save the suite file as UTF-8" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_out_naming_a_file_and_a_corrupt_store_leave_everything_as_it_was(tmp_path, capsys):
    suite = suite_file(tmp_path)
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    code, err, _ = run_cli(["run", str(suite), "--out", str(a_file)], capsys)
    assert code == 2 and f"--out {str(a_file)!r} is a file" in err and a_file.read_text() == "not a folder"

    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow.db").write_bytes(b"\x00garbage, not sqlite" * 50)
    code, err, _ = run_cli(["run", str(suite), "--out", str(out)], capsys)
    assert code == 2 and "is not an SQLite database (corrupt or another file)" in err
    assert sorted(p.name for p in out.iterdir()) == ["mlflow.db"]  # no tmp/, no lock, no artifacts


def test_a_valid_header_but_broken_store_is_one_line_and_nothing_is_added(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 2000)
    code, err, _ = run_cli(["run", str(suite_file(tmp_path)), "--out", str(out)], capsys)
    assert code == 2 and err.startswith(f"noharm: error: cannot use MLflow tracking store 'sqlite:///{out}/mlflow.db'")
    assert err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["mlflow.db"]


TRIAL_CASES = [
    ("epochs-0", ["--set", "epochs=0"], "hparam 'epochs' must be >= 1, got 0"),
    ("batch-size-0", ["--set", "batch_size=0"], "hparam 'batch_size' must be >= 1, got 0"),
    ("lr-0", ["--set", "lr=0"], "hparam 'lr' must be > 0, got 0.0"),
    ("momentum-1", ["--set", "momentum=1"], "hparam 'momentum' must be >= 0 and < 1, got 1.0"),
    ("device", ["--device", "gpu0"], "unknown device 'gpu0'"),
    ("attribute-twice", ["--attribute", "sex+sex"], "unknown attribute 'sex+sex'"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in TRIAL_CASES], ids=[c[0] for c in TRIAL_CASES])
def test_trial_checks_the_same_declarations(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["trial", "--dataset", "adult", "--attribute", "sex", "--method", "erm", "--quiet", "--out", str(out)]
    code, err, _ = run_cli([*args, *argv], capsys)
    assert code == 2 and err.startswith("noharm: error: ") and fragment in err, err
    assert err.count("\n") == 1 and not out.exists()


def test_trial_seed_and_out_file(tmp_path, capsys):
    args = ["trial", "--dataset", "adult", "--attribute", "sex", "--method", "erm", "--quiet"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--seed", "-1"])
    assert exit_.value.code == 2 and "argument --seed: must be >= 0, got -1" in capsys.readouterr().err
    a_file = tmp_path / "f"
    a_file.write_text("x")
    code, err, _ = run_cli([*args, "--out", str(a_file)], capsys)
    assert code == 2 and f"--out {str(a_file)!r} is a file" in err and a_file.read_text() == "x"


def test_stress_against_a_missing_store_creates_nothing(tmp_path, capsys):
    db = tmp_path / "nowhere" / "mlflow.db"
    code, err, _ = run_cli(["stress", "--experiment", "x", "--tracking-uri", f"sqlite:///{db}", "--quiet"], capsys)
    assert code == 2 and f"no MLflow store at {str(db)!r}" in err
    assert list(tmp_path.iterdir()) == []


def test_ranges_are_declared_once_and_checked_everywhere():
    """The suite, `--set` and the search all read the same declaration; a search range outside it is refused."""
    from noharm.methods.hparams import Float, HparamError, Int, LogFloat, search_space
    from noharm.methods.training import TRAINING_HPARAMS as T

    assert (T["epochs"].ge, T["batch_size"].ge, T["lr"].gt) == (1, 1, 0.0)
    assert T["lr"].describe() == "float, default 0.001, must be > 0, searched log-uniformly in [0.0001, 0.1]"
    assert T["weight_decay"].cast("weight_decay", "0") == 0.0  # a log scale may still be switched off
    with pytest.raises(HparamError, match="must be >= 0"):
        T["weight_decay"].cast("weight_decay", "-1e-4")
    with pytest.raises(HparamError, match=r"search low 0 is outside the valid range \(>= 1\)"):
        Int(4, low=0, high=8, ge=1)
    with pytest.raises(HparamError, match=r"default 0.0 is outside the valid range \(> 0\)"):
        Float(0.0, low=0.1, high=1.0, gt=0.0)
    assert search_space({"k": LogFloat(0.1, low=0.01, high=1.0, gt=0)})["k"].lower == 0.01
