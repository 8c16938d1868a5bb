"""Two drivers on one suite and experiment: the second is refused (lock file or lease record), and the sweep's
own table counts a key FINISHED twice once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.plugins import env_with_site, install_testkit, marked_env, marked_pids, stop_marked, write_suite
from tests.test_resume import STAGE_SQL, wait_until_finished


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    from noharm.bench.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('lease') / 'mlflow.db'}"
    Tracker.open(uri, "first")  # creating the tables takes seconds: once per module
    return uri


@pytest.fixture
def store(store_uri, request):
    """A fresh experiment of the module's store."""
    from noharm.bench.tracking import Tracker

    return Tracker.open(store_uri, request.node.name)


def test_lock_file_refuses_a_second_holder_and_names_the_first(tmp_path):
    import os

    from noharm.bench.sweep.lease import LeaseHeld, lock_local_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = lock_local_store(uri, "my exp", "s")
    assert first.path == tmp_path / "mlflow.db.my-exp.lock"
    with pytest.raises(LeaseHeld) as held:
        lock_local_store(uri, "my exp", "s")
    assert f"pid {os.getpid()} on " in str(held.value) and "suite 's' in experiment 'my exp'" in str(held.value)
    assert lock_local_store(uri, "other", "s").path.name == "mlflow.db.other.lock"  # another experiment is free
    first.release()
    lock_local_store(uri, "my exp", "s").release()  # free again once released
    assert lock_local_store("http://127.0.0.1:1", "e", "s") is None  # servers use a lease record


def test_lease_record_refuses_a_live_holder_and_takes_over_a_stale_one(store):
    from noharm.bench.sweep.lease import LeaseHeld, RecordLease

    a = RecordLease(store, "s", holder="driver A", settle=0.05, heartbeat=0.1)
    a.acquire("suite s")
    record = a.read()
    assert record["holder"] == "driver A" and time.time() - record["heartbeat"] < 5
    time.sleep(0.35)  # a few heartbeats
    assert a.read()["heartbeat"] > record["heartbeat"]
    with pytest.raises(LeaseHeld, match=r"already being run by another driver \(driver A; lease tag 'noharm.lease.s'"):
        RecordLease(store, "s", holder="driver B", settle=0.05).acquire("suite s")
    # A dead holder: its heartbeat stops and the record goes stale; a new driver takes over.
    a._stop.set()
    a._thread.join()
    store.client.set_experiment_tag(store.experiment_id, a.tag,
                                    json.dumps({"holder": "driver A", "heartbeat": time.time() - 120}))
    b = RecordLease(store, "s", holder="driver B", settle=0.05, heartbeat=60).acquire("suite s")
    assert b.read()["holder"] == "driver B"
    a.release()  # the old holder no longer owns the record: it leaves it alone
    assert b.read()["holder"] == "driver B"
    b.release()
    assert b.read() is None


def test_racing_lease_records_have_exactly_one_winner(store):
    from noharm.bench.sweep.lease import LeaseHeld, RecordLease

    results: dict[str, str] = {}
    leases = [RecordLease(store, "race", holder=f"driver {i}", settle=0.5, heartbeat=60) for i in range(3)]

    def take(lease):
        try:
            lease.acquire("suite race")
            results[lease.holder] = "won"
        except LeaseHeld:
            results[lease.holder] = "refused"

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["refused", "refused", "won"]
    for lease in leases:
        lease.release()


def test_lease_write_that_collides_on_the_unique_key_is_retried(store, monkeypatch):
    """Two first writers collide on the SQL store's (key, experiment) unique constraint (seen in CI):
    the loser must retry as an update and then settle by read-back, not crash its thread."""
    from mlflow.exceptions import MlflowException

    from noharm.bench.sweep.lease import RecordLease

    real = store.client.set_experiment_tag
    calls = {"n": 0}

    def collide_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            real(store.experiment_id, "noharm.lease.c", json.dumps({"holder": "driver X", "heartbeat": 0}))
            raise MlflowException("UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.client, "set_experiment_tag", collide_once)
    lease = RecordLease(store, "c", holder="driver Y", settle=0.05, heartbeat=60).acquire("suite c")
    assert calls["n"] == 2 and lease.read()["holder"] == "driver Y"
    lease.release()


def test_sweep_table_counts_a_key_finished_twice_once(store):
    from noharm.bench.sweep.report import comparison
    from noharm.bench.tracking import log_finished_run

    def log(seed: int, key: str, acc: float) -> None:
        tags = {"noharm.suite": "s", "noharm.stage": "evaluate", "noharm.key": key, "noharm.dataset": "adult",
                "noharm.target": "income", "noharm.attribute": "sex", "noharm.method": "erm",
                "noharm.seed": seed, "noharm.candidates": "model", "noharm.groups": '["female", "male"]'}
        log_finished_run(store, f"evaluate s{seed}", tags, {}, {"test/model/acc": acc, "test/model/acc/worst": acc})
        time.sleep(0.01)  # distinct start times: the oldest is well defined

    log(0, "k0", 0.80)
    log(1, "k1", 0.70)
    log(0, "k0", 0.20)  # a second driver's duplicate of k0, worse by chance
    frame = store.frame("s")
    assert len(frame) == 2 and sorted(frame["test/model/acc"]) == [0.70, 0.80]
    table = comparison(frame)
    assert table.loc[0, "acc"] == pytest.approx(0.75) and table.loc[0, "seeds"] == 2


def test_second_driver_is_refused_while_the_first_finishes(tmp_path_factory, tmp_path):
    """Two `noharm run` processes on one suite and store: the second exits 2 in seconds naming the first; the
    first, whose --out is not ASCII (Ray's folder then lives elsewhere), finishes every key exactly once."""
    site = install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit")
    mark = uuid.uuid4().hex
    env = marked_env(env_with_site(site), mark)
    # One trial at a time and two 15 s trials: after the first FINISHED run at least one slow trial is still
    # ahead, so the first driver holds its lock well past the second's start, on a quiet machine too.
    suite = write_suite(tmp_path / "two.yaml", name="two", seeds=[0, 1],
                        methods=["tiny-erm", "group-models", {"slow-erm": {"pause": 15.0}}],
                        datasets=[{"name": "tiny-blobs", "attributes": ["side"]}],
                        hparams={"epochs": 2, "hidden": 16}, selectors=["greedy"],
                        max_concurrent=1)
    out = tmp_path / "résultats-ü"
    db = out / "mlflow.db"
    cmd = [sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--out", str(out), "--quiet"]
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until_finished(db, 1, first)
        t0 = time.monotonic()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        refused_in = time.monotonic() - t0
        stdout, stderr = first.communicate(timeout=240)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        stop_marked(mark)
    assert not marked_pids(mark)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.startswith(f"noharm: error: suite 'two' in experiment 'two' of sqlite:///{db} is already "
                                    f"being run by another driver (pid {first.pid} on ")
    assert second.stderr.count("\n") == 1 and refused_in < 15
    assert "tiny-erm" in stdout and (out / "summary.csv").is_file()
    assert not (out / "tmp").exists()  # Ray's sockets cannot live under a non-ASCII path

    with sqlite3.connect(db) as con:
        rows = con.execute(STAGE_SQL).fetchall()
    finished = Counter((stage, key) for stage, key, status in rows if status == "FINISHED")
    # 4 cells (tiny-erm, group-models, slow-erm, ERM) x 2 seeds evaluated; group-models composed on 2 seeds.
    assert set(finished.values()) == {1}
    assert Counter(stage for stage, _ in finished) == {"evaluate": 8, "compose": 2}
    assert Counter(status for *_, status in rows) == {"FINISHED": 10}
