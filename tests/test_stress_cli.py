"""`noharm stress` on run folders, the stress suite file, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest

from noharm.analysis import predictions as P
from noharm.bench.cli import main
from noharm.bench.errors import ConfigError
from noharm.bench.stress.run import default_suite_path, load_stress_suite, parse_stress_suite
from noharm.bench.stress.runner import COLUMNS


def write_run(folder, method: str, seed: int = 0, attribute: str = "g", shift: float = 0.0):
    """A run folder without weights: predictions whose accuracy per group is set by `shift`."""
    rng = np.random.default_rng(7)  # the same samples for both runs
    n = 1200
    group = rng.choice(2, n, p=[0.7, 0.3])
    y = rng.integers(0, 2, n)
    split = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.2, 0.4, 0.4])]
    ok = np.random.default_rng(zlib.crc32(method.encode())).random(n) < 0.8 + shift * (group == 1)
    pred = np.where(ok, y, 1 - y)
    base = pd.DataFrame({"sample_id": np.arange(n).astype(str), "split": split, "y": y,
                         "group": np.where(group == 1, "B", "A"), "group_id": group})
    cand = "model" if method == "erm" else "experts"
    folder.mkdir(parents=True)
    P.build(base, {cand: np.eye(2)[pred] * 0.9 + 0.05}).to_parquet(folder / "predictions.parquet")
    (folder / "config.json").write_text(json.dumps({"dataset": "synthetic", "attribute": attribute, "method": method,
                                                    "seed": seed}))
    return folder


SMALL = """
repeats: 40
selectors: [greedy, ip-gap, safe, blind]
scenarios:
  - {kind: val-size, severities: [20, 100]}
  - {kind: label-shift, severities: [0.0, 0.2]}
  - {kind: corruption, corruptions: [blur], severities: [0, 2]}
"""


def test_stress_command_on_run_folders(tmp_path, capsys):
    method = write_run(tmp_path / "m", "decoupled", shift=0.05)
    erm = write_run(tmp_path / "e", "erm")
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    assert main(["stress", "--run", str(method), "--erm", str(erm), "--suite", str(suite), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stress of decoupled vs erm on synthetic (g), seed 0: 40 repeats" in out
    assert "skipped: blind routing: the runs lack model.pt" in out
    assert "skipped: scenario corruption-blur: re-scoring needs the stored models" in out
    table = pd.read_parquet(method / "stress" / "stress.parquet")
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 2 * 2 * 3  # two scenarios x two severities x three selectors (blind dropped)
    assert table["dataset"].eq("synthetic").all() and table["seed"].eq(0).all()
    assert "harm rate" in out and "val-size" in out


def test_stress_command_repeats_and_out(tmp_path):
    method, erm = write_run(tmp_path / "m", "decoupled"), write_run(tmp_path / "e", "erm")
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    assert main(["stress", "--run", str(method), "--erm", str(erm), "--suite", str(suite), "--repeats", "5",
                 "--tolerance", "0", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    table = pd.read_parquet(tmp_path / "o" / "stress.parquet")
    assert table["repeats"].max() <= 5 and (table["tolerance"] == 0.0).all()


@pytest.mark.parametrize("args, message", [
    (["--run", "{m}"], "--run needs --erm DIR"),
    (["--run", "{m}", "--erm", "{m}"], "is a 'decoupled' run; give an erm run as --erm"),
    (["--run", "{m}", "--erm", "{x}"], "is not a trial folder"),
    (["--run", "{m}", "--erm", "{e2}"], "the ERM run is for seed=1, the method run for 0"),
    (["--run", "{m}", "--erm", "{e}", "--repeats", "0"], "--repeats must be a positive integer"),
    (["--run", "{m}", "--erm", "{e}", "--tolerance", "2"], r"tolerance is an accuracy drop in [0, 1)"),
    (["--run", "{m}", "--erm", "{e}", "--suite", "{x}/none.yaml"], "does not exist"),
    (["--experiment", "exp", "--erm", "{e}"], "--erm and --out go with --run"),
])
def test_stress_command_bad_input(tmp_path, capsys, args, message):
    paths = {"m": write_run(tmp_path / "m", "decoupled"), "e": write_run(tmp_path / "e", "erm"),
             "e2": write_run(tmp_path / "e2", "erm", seed=1), "x": tmp_path}
    assert main(["stress", *[a.format(**paths) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("noharm: error:") and err.count("\n") == 1


def test_packaged_suite_parses():
    suite = load_stress_suite(default_suite_path())
    kinds = {s.kind for s in suite.scenarios}
    assert kinds == {"val-group-fraction", "val-size", "label-shift", "test-group-mix", "corruption"}
    assert [s.name for s in suite.scenarios if s.kind == "corruption"] == [
        "corruption-noise", "corruption-blur", "corruption-contrast", "corruption-jpeg"]
    assert set(suite.settings.selectors) >= {"greedy", "ip-gap", "ip-utility", "safe", "blind"}
    assert load_stress_suite(None, repeats=7).settings.repeats == 7


@pytest.mark.parametrize("raw, message", [
    ({"scenarios": []}, "`scenarios` must be a non-empty list"),
    ({"scenarios": [{"kind": "val-size"}], "repeat": 3}, r"unknown key\(s\) repeat"),
    ({"scenarios": [{"kind": "val-size"}, {"kind": "val-size"}]}, "scenario names must be unique, val-size repeats"),
    ({"scenarios": [{"kind": "val-size"}], "router": "oracle"}, "unknown router 'oracle'"),
    ({"scenarios": [{"kind": "val-size"}], "selectors": ["greedy", "best"]}, "unknown selector 'best'"),
    ({"scenarios": [{"kind": "val-size"}], "seed": "zero"}, "seed must be a number"),
    ({"scenarios": [{"kind": "val-size"}], "repeats": -1}, "repeats must be a positive integer"),
    ([1, 2], "a stress suite is a mapping"),
])
def test_bad_suites(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_stress_suite(raw, where="s.yaml")


def test_bad_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("scenarios: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_stress_suite(path)


def test_stress_over_an_mlflow_experiment(tmp_path):
    from noharm.bench import tracking
    from noharm.bench.stress.run import run_stress_for_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.Tracker.open(uri, "exp", artifact_location=str(tmp_path / "artifacts"))
    ids = {}
    for method in ("decoupled", "erm"):
        folder = write_run(tmp_path / method, method, shift=0.05)
        tags = {"noharm.stage": "evaluate", "noharm.dataset": "synthetic", "noharm.attribute": "g",
                "noharm.method": method, "noharm.seed": "0", "noharm.suite": "s"}
        ids[method] = tracking.log_finished_run(tracker, method, tags, {}, {}, folder)
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    lines = []
    table = run_stress_for_experiment("exp", tracking_uri=uri, suite_path=str(suite), log=lines.append)
    assert set(table["scenario"]) == {"val-size", "label-shift"}
    stress = tracker.runs(stage="stress", status="FINISHED")
    by_scenario = {r.data.tags["noharm.scenario"]: r for r in stress}
    assert set(by_scenario) == {"val-size", "label-shift", "corruption-blur", "blind-routing"}
    assert "lack model.pt" in by_scenario["blind-routing"].data.tags["noharm.skipped"]
    run = by_scenario["val-size"]
    t = run.data.tags
    assert (t["noharm.method"], t["noharm.dataset"], t["noharm.attribute"], t["noharm.seed"]) == \
        ("decoupled", "synthetic", "g", "0")
    assert t["noharm.stressed_run"] == ids["decoupled"] and t["noharm.erm_run"] == ids["erm"]
    assert "re-scoring needs the stored models" in by_scenario["corruption-blur"].data.tags["noharm.skipped"]
    logged = pd.read_parquet(tracker.download(run.info.run_id, "stress.parquet", tmp_path / "dl"))
    assert list(logged.columns) == list(COLUMNS) and set(logged["scenario"]) == {"val-size"}
    rate = logged.query("strategy == 'greedy'")["harm_rate"].mean()
    assert run.data.metrics["stress/greedy/harm_rate_mean"] == pytest.approx(rate)
    history = tracker.client.get_metric_history(run.info.run_id, "stress/greedy/harm_rate")
    assert sorted(m.step for m in history) == [0, 1]
    # A second pass finds everything done and logs nothing new.
    again = run_stress_for_experiment("exp", tracking_uri=uri, suite_path=str(suite), log=lines.append)
    assert len(again) == 0 and len(tracker.runs(stage="stress")) == 4
    assert any("already stressed" in line for line in lines)
    with pytest.raises(ConfigError, match="no MLflow experiment 'nope'"):
        run_stress_for_experiment("nope", tracking_uri=uri, suite_path=str(suite))
