"""`kill -9` of a sweep's driver mid-way, then the same command again: every key FINISHED exactly once."""

from __future__ import annotations

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
    cmd = [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(out)]
    # Grid: 3 cells searched (tiny-erm, group-models and ERM on `side`) x 2 trials; 6 cells x 3 seeds
    # evaluated; group-models composed with ERM on 2 attributes x 3 seeds.
    expected = {"search": 6, "evaluate": 18, "compose": 6}
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 150
        while finished_count(db) < 8 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, f"the sweep ended before it could be killed: {first.stderr.read()[-2000:]}"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()
        done_before = finished_count(db)
        assert 8 <= done_before < sum(expected.values())
        stop_marked(mark)  # Ray processes the killed driver left behind (by pid, only ours)

        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "resuming:" in second.stderr and "already FINISHED in MLflow are reused" in second.stderr
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
