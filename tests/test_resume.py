"""`kill -9` of a sweep's driver mid-way, then the same command again: every key FINISHED exactly once."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from tests.plugins import env_with_site, install_testkit, marked_env, marked_pids, stop_marked, write_suite

STAGE_SQL = """
select t_stage.value, t_key.value, r.status from runs r
join tags t_stage on t_stage.run_uuid = r.run_uuid and t_stage.key = 'noharm.stage'
join tags t_key on t_key.run_uuid = r.run_uuid and t_key.key = 'noharm.key'
"""


def finished_count(db) -> int:
    """FINISHED runs in the sweep's SQLite store, read-only (0 while the store does not exist yet)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return 0


def wait_until_finished(db, n: int, driver: subprocess.Popen, timeout: float = 150, poll: float = 0.1) -> None:
    """Wait until the store holds `n` FINISHED runs while `driver` still runs (assert it did not end first)."""
    deadline = time.monotonic() + timeout
    while finished_count(db) < n and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(poll)
    if driver.poll() is not None:
        err = driver.stderr.read()[-2000:] if driver.stderr else ""
        raise AssertionError(f"the sweep ended before {n} runs FINISHED: {err}")
    assert finished_count(db) >= n, f"fewer than {n} runs FINISHED in {timeout} s"


def test_resume_after_sigkill_completes_grid_exactly_once(tmp_path_factory, tmp_path):
    site = install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit")
    mark = uuid.uuid4().hex
    env = marked_env(env_with_site(site), mark)
    suite = write_suite(tmp_path / "resume.yaml", name="resume", seeds=[0, 1, 2],
                        methods=["tiny-erm", "group-models"],
                        datasets=[{"name": "tiny-blobs", "attributes": ["side", "size"], "search": ["side"]}],
                        hparams={"epochs": 3, "hidden": 16}, search={"trials": 2}, selectors=["greedy"],
                        max_concurrent=2)
    out = tmp_path / "out"
    db = out / "mlflow.db"
    cmd = [sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--out", str(out)]
    # Grid: 3 cells searched (tiny-erm, group-models and ERM on `side`) x 2 trials; 6 cells x 3 seeds
    # evaluated; group-models composed with ERM on 2 attributes x 3 seeds.
    expected = {"search": 6, "evaluate": 18, "compose": 6}
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until_finished(db, 8, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()
        done_before = finished_count(db)
        assert 8 <= done_before < sum(expected.values())
        stop_marked(mark)  # Ray processes the killed driver left behind (by pid, only ours)

        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 0, second.stderr[-3000:]
        # The resume line and the progress line count the same thing: trials already FINISHED.
        resumed = re.search(r"resuming: (\d+) trials already FINISHED in MLflow are skipped", second.stderr)
        progress = re.findall(r"\((\d+) already in MLflow\)", second.stderr)
        assert resumed and progress and resumed.group(1) == progress[-1], second.stderr[-2000:]
    finally:
        stop_marked(mark)
    assert not marked_pids(mark)

    with sqlite3.connect(db) as con:
        rows = con.execute(STAGE_SQL).fetchall()
    finished = Counter((stage, key) for stage, key, status in rows if status == "FINISHED")
    assert set(finished.values()) == {1}, "a key FINISHED more than once"
    assert Counter(stage for stage, _ in finished) == expected
    statuses = Counter(status for _, _, status in rows)
    assert statuses["RUNNING"] == 0 and set(statuses) <= {"FINISHED", "KILLED"}
    # Compose runs: one per strategy; the rerun kept everything the killed driver had finished.
    assert len(finished) >= done_before


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


METRICS_SQL = """
select t_stage.value, t_key.value, m.key, m.value, m.step from runs r
join tags t_stage on t_stage.run_uuid = r.run_uuid and t_stage.key = 'noharm.stage'
join tags t_key on t_key.run_uuid = r.run_uuid and t_key.key = 'noharm.key'
join metrics m on m.run_uuid = r.run_uuid
where r.status = 'FINISHED'
"""
PARAMS_SQL = """
select t_stage.value, t_key.value, p.key, p.value from runs r
join tags t_stage on t_stage.run_uuid = r.run_uuid and t_stage.key = 'noharm.stage'
join tags t_key on t_key.run_uuid = r.run_uuid and t_key.key = 'noharm.key'
join params p on p.run_uuid = r.run_uuid
where r.status = 'FINISHED'
"""


def finished_record(db) -> dict:
    """{(stage, key): {"metrics": {(name, step): value}, "params": {...}}} of the FINISHED runs, without timings."""
    out: dict = {}
    with sqlite3.connect(db) as con:
        for stage, key, name, value, step in con.execute(METRICS_SQL):
            if not name.startswith(("cost/", "epoch/seconds", "diagnostics/seconds")):
                out.setdefault((stage, key), {"metrics": {}, "params": {}})["metrics"][(name, step)] = value
        for stage, key, name, value in con.execute(PARAMS_SQL):
            out.setdefault((stage, key), {"metrics": {}, "params": {}})["params"][name] = value
    return out


def test_killed_during_search_and_resumed_equals_a_clean_sweep(tmp_path_factory, tmp_path):
    """Kill -9 while the searches run, resume, and compare with a sweep that was never interrupted (run at the
    same time, so the two also differ in scheduling): the same keys FINISHED, with bit-identical numbers."""
    site = install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit")
    mark = uuid.uuid4().hex
    env = marked_env(env_with_site(site), mark)
    suite = write_suite(tmp_path / "same.yaml", name="same", seeds=[0, 1], methods=["tiny-erm", "group-models"],
                        datasets=[{"name": "tiny-blobs", "attributes": ["side"]}],
                        hparams={"epochs": 2, "hidden": 16}, search={"trials": 3}, max_concurrent=2)
    clean_out, resumed_out = tmp_path / "clean", tmp_path / "resumed"
    cmd = [sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--quiet", "--out"]
    try:
        clean = subprocess.Popen(cmd + [str(clean_out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
        first = subprocess.Popen(cmd + [str(resumed_out)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        db = resumed_out / "mlflow.db"
        wait_until_finished(db, 2, first, poll=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        with sqlite3.connect(db) as con:
            searched_before = Counter(status for stage, _, status in con.execute(STAGE_SQL) if stage == "search")
        # 2 cells x 3 search trials: killed while searching.
        assert 2 <= searched_before["FINISHED"] < 6
        second = subprocess.run(cmd + [str(resumed_out)], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        _, clean_err = clean.communicate(timeout=300)
        assert clean.returncode == 0, clean_err[-3000:]
    finally:
        stop_marked(mark)
    assert not marked_pids(mark)

    clean_runs, resumed_runs = finished_record(clean_out / "mlflow.db"), finished_record(resumed_out / "mlflow.db")
    assert Counter(stage for stage, _ in clean_runs) == {"search": 6, "evaluate": 4}
    assert sorted(clean_runs) == sorted(resumed_runs)  # the same settings searched and chosen
    for stage_key, record in clean_runs.items():
        assert resumed_runs[stage_key]["params"] == record["params"], stage_key
        assert resumed_runs[stage_key]["metrics"] == record["metrics"], stage_key  # bit-identical floats
    assert len({r["params"]["lr"] for (stage, _), r in clean_runs.items() if stage == "search"}) == 6
