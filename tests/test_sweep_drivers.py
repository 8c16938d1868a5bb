"""Two drivers on one suite and experiment: the second is refused (lock file or lease record), and the sweep's
own table counts a key FINISHED twice once."""

from __future__ import annotations

import json
import os
import signal
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
    from noharm.bench.sweep.lease import LeaseHeld, lock_local_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = lock_local_store(uri, "my exp", "s")
    assert first.path == tmp_path / "mlflow.db.my-exp.lock"
    with pytest.raises(LeaseHeld) as held:
        lock_local_store(uri, "my exp", "s")
    assert f"(pid {os.getpid()} on " in str(held.value) and "suite 's' in experiment 'my exp'" in str(held.value)
    assert lock_local_store(uri, "other", "s").path.name == "mlflow.db.other.lock"  # another experiment is free
    first.release()
    lock_local_store(uri, "my exp", "s").release()  # free again once released
    assert lock_local_store("http://127.0.0.1:1", "e", "s") is None  # servers use a lease record


HOLD_LOCK = """
import sys, time
from noharm.bench.sweep.lease import lock_local_store
lock_local_store(sys.argv[1], "e", "s")
print("held", flush=True)
time.sleep(600)
"""


def test_lock_file_of_a_process_killed_with_sigkill_is_free_at_once(tmp_path):
    """The OS drops the lock with its holder: another process holds it (refused, named by pid), is killed
    with SIGKILL, and the lock is taken right away."""
    from noharm.bench.sweep.lease import LeaseHeld, lock_local_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=rf"already being run by another driver \(pid {holder.pid} on "):
            lock_local_store(uri, "e", "s")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    lock_local_store(uri, "e", "s").release()


BLOCK_FCNTL = """
import sys
class NoFcntl:
    def find_spec(self, name, path=None, target=None):
        if name == "fcntl":
            raise ModuleNotFoundError("No module named 'fcntl'", name="fcntl")
sys.modules.pop("fcntl", None)
sys.meta_path.insert(0, NoFcntl())
import noharm.bench.sweep.lease, noharm.bench.sweep.run
try:
    import fcntl
except ModuleNotFoundError:
    print("imported without fcntl")
"""


def test_the_sweep_imports_where_there_is_no_fcntl():
    """Windows has no `fcntl`: the lease (and the sweep that takes it) must import without it."""
    done = subprocess.run([sys.executable, "-c", BLOCK_FCNTL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "imported without fcntl"


def record_of(lease, **fields) -> None:
    """Write a lease record as another driver would (fields over a fresh record of this process)."""
    from noharm.bench.sweep.lease import this_holder

    record = {**this_holder("stranger"), "heartbeat": time.time(), **fields}
    lease.tracker.client.set_experiment_tag(lease.tracker.experiment_id, lease.tag, json.dumps(record))


def test_lease_record_heartbeats_and_refuses_a_live_holder_on_this_machine(store):
    from noharm.bench.sweep.lease import LeaseHeld, RecordLease, machine_id

    a = RecordLease(store, "s", driver="aaaa", settle=0.05, heartbeat=0.1).acquire("suite s")
    record = a.read()
    assert (record["driver"], record["pid"], record["machine"]) == ("aaaa", os.getpid(), machine_id())
    assert time.time() - record["heartbeat"] < 5 and record["since"] <= record["heartbeat"]
    time.sleep(0.35)  # a few heartbeats
    assert a.read()["heartbeat"] > record["heartbeat"] and a.read()["since"] == record["since"]
    with pytest.raises(LeaseHeld) as held:
        RecordLease(store, "s", driver="bbbb", settle=0.05).acquire("suite s")
    assert str(held.value).startswith(f"suite s is already being run by another driver (pid {os.getpid()} on ")
    assert (f", driver aaaa, since " in str(held.value) and "lease tag 'noharm.lease.s', its process runs on this "
            f"machine); it is taken over as soon as pid {os.getpid()} ends" in str(held.value))
    # Alive on this machine: refused however old its heartbeat.
    a._stop.set()
    a._thread.join()
    record_of(a, driver="aaaa", heartbeat=time.time() - 3600)
    with pytest.raises(LeaseHeld, match="its process runs on this machine"):
        RecordLease(store, "s", driver="bbbb", settle=0.05).acquire("suite s")
    a.release()
    assert a.read() is None


def test_lease_of_a_dead_process_on_this_machine_is_taken_over_at_once(store):
    """Same machine, the holder's pid is gone (or reused by another process): taken over with a fresh heartbeat."""
    from noharm.bench.sweep.lease import RecordLease, process_started

    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = process_started(gone.pid)
    gone.send_signal(signal.SIGKILL)
    gone.wait(timeout=30)
    lease = RecordLease(store, "dead", driver="cccc", settle=0.05, heartbeat=60)
    record_of(lease, pid=gone.pid, pid_started=started)
    t0 = time.monotonic()
    lease.acquire("suite dead")
    assert lease.read()["driver"] == "cccc" and time.monotonic() - t0 < 5
    lease.release()
    # A live process with the recorded pid but another creation time is not the holder: the pid was reused.
    record_of(lease, pid_started=process_started(os.getpid()) - 3600)
    lease.acquire("suite dead")
    assert lease.read()["driver"] == "cccc"
    lease.release()


def test_lease_of_another_machine_is_refused_until_its_heartbeat_is_stale(store):
    from noharm.bench.sweep.lease import STALE_AFTER, LeaseHeld, RecordLease, when

    lease = RecordLease(store, "far", driver="dddd", settle=0.05, heartbeat=60)
    beat, since = time.time() - 2, time.time() - 600
    record_of(lease, host="node-7", machine="node-7/boot/ns", pid=4242, since=since, heartbeat=beat)
    with pytest.raises(LeaseHeld) as held:
        lease.acquire("suite far")
    assert str(held.value) == (
        f"suite far is already being run by another driver (pid 4242 on node-7, driver stranger, since {when(since)}; "
        f"lease tag 'noharm.lease.far', last heartbeat 2 s ago); it counts as stale and is taken over at "
        f"{when(beat + STALE_AFTER)} if its heartbeats (every 60 s) stop: wait for it to finish or stop it, then rerun")
    assert "\n" not in str(held.value)
    record_of(lease, host="node-7", machine="node-7/boot/ns", pid=4242, heartbeat=time.time() - STALE_AFTER - 1)
    lease.acquire("suite far")
    assert lease.read()["driver"] == "dddd"
    lease.release()


def test_a_holder_taken_over_stops_renewing_and_warns(store, capsys):
    from noharm.bench.sweep.lease import RecordLease

    a = RecordLease(store, "over", driver="eeee", settle=0.05, heartbeat=0.1).acquire("suite over")
    record_of(a, host="node-8", machine="node-8/boot/ns", pid=99)
    deadline = time.monotonic() + 10
    while a.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.lost and a.lost["host"] == "node-8"
    a._thread.join(timeout=5)
    assert not a._thread.is_alive() and a.read()["host"] == "node-8"  # it did not write over the new holder
    assert "noharm: warning: the lease 'noharm.lease.over' was taken over by another driver (pid 99 on node-8" \
        in capsys.readouterr().err
    a.release()  # not its record any more: left alone
    assert a.read()["host"] == "node-8"


def test_racing_lease_records_have_exactly_one_winner(store):
    from noharm.bench.sweep.lease import LeaseHeld, RecordLease

    results: dict[str, str] = {}
    leases = [RecordLease(store, "race", driver=f"driver {i}", settle=0.5, heartbeat=60) for i in range(3)]

    def take(lease):
        try:
            lease.acquire("suite race")
            results[lease.driver] = "won"
        except LeaseHeld:
            results[lease.driver] = "refused"

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
            real(store.experiment_id, "noharm.lease.c", json.dumps({"driver": "driver X", "heartbeat": 0}))
            raise MlflowException("UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.client, "set_experiment_tag", collide_once)
    lease = RecordLease(store, "c", driver="driver Y", settle=0.05, heartbeat=60).acquire("suite c")
    assert calls["n"] == 2 and lease.read()["driver"] == "driver Y"
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
