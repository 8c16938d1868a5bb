"""`noharm run --address --tracking-uri` on one machine: a small suite on a head node and an MLflow server that the test starts on 127.0.0.1 (and stops), the cluster set-up the README
describes; and a worker node lost mid-sweep on Ray's own test cluster (`ray.cluster_utils.Cluster`)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from tests.plugins import (MARK, env_with_site, free_port, install_testkit, marked_env, marked_pids, stop_marked,
                           write_suite)

RAY = str(Path(sys.executable).with_name("ray"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the MLflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"MLflow server at {url} did not come up in {timeout} s")


def test_suite_runs_on_a_head_node_with_an_mlflow_server(tmp_path_factory, tmp_path):
    site = install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit")
    mark = uuid.uuid4().hex
    env = marked_env(env_with_site(site), mark)
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="nh-head-", dir="/tmp"))  # short: Ray's socket paths live here
    suite = write_suite(tmp_path / "cluster.yaml", name="cluster", seeds=[0, 1], methods=["tiny-erm", "group-models"],
                        datasets=[{"name": "tiny-blobs", "attributes": ["side"]}],
                        hparams={"epochs": 2, "hidden": 16}, selectors=["greedy"], max_concurrent=2)
    out = tmp_path / "out"
    shared = tmp_path / "shared-artifacts"
    server = None
    try:
        server, url, store = start_mlflow_server(tmp_path, env)
        head = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert head.returncode == 0, head.stderr[-2000:]
        wait_healthy(url, server)
        run = subprocess.run(
            [sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--out", str(out), "--address", f"127.0.0.1:{port}",
             "--tracking-uri", url],
            env=env, capture_output=True, text=True, timeout=240,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "group-models + greedy" in run.stdout and f"a browser at {url} (experiment 'cluster')" in run.stdout
        # The trials ran in the head node's workers, not in a local Ray of the driver.
        logs = list(temp.glob("session_*/logs/worker-*"))
        assert logs, "no worker ever started on the head node"
        assert not (out / "tmp").exists() and not (out / "mlflow.db").exists()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        stop_marked(mark)  # only what this test started: its processes carry our marker
        shutil.rmtree(temp, ignore_errors=True)
    assert not marked_pids(mark)

    # Everything went through the server: runs in its store, artifacts in the shared storage.
    with sqlite3.connect(store) as con:
        rows = con.execute("select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                           "and t.key = 'noharm.stage'").fetchall()
    # 3 cells (tiny-erm, group-models, ERM) x 2 seeds, and group-models composed on 2 seeds.
    assert Counter(rows) == {("evaluate", "FINISHED"): 6, ("compose", "FINISHED"): 2}
    assert len(list(shared.rglob("predictions.parquet"))) == 8 and len(list(shared.rglob("model.pt"))) == 6


def start_mlflow_server(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, str, Path]:
    """An MLflow server on 127.0.0.1 with an SQLite store and local artifact storage; (process, url, store)."""
    store, shared = tmp_path / "server.db", tmp_path / "shared-artifacts"
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(shared)],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return server, url, store


def running_on(client, experiment: str, node_id: str) -> bool:
    """Whether a RUNNING run of `experiment` is on node `node_id` (False while the experiment does not exist)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return any(r.data.tags.get("noharm.node") == node_id for r in runs)


def wait_running_on(client, experiment: str, node_id: str, driver: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until a trial of the sweep runs on node `node_id` (assert the driver is still going)."""
    deadline = time.monotonic() + timeout
    while not running_on(client, experiment, node_id):
        assert driver.poll() is None, f"the sweep ended before a trial ran on node {node_id}: {driver.stderr.read()}"
        assert time.monotonic() < deadline, f"no trial ran on node {node_id} in {timeout} s"
        time.sleep(0.2)


def test_a_lost_worker_node_is_survived_and_a_new_node_gets_work(tmp_path_factory, tmp_path, monkeypatch):
    """Ray's own test cluster: a head (no CPUs) and two 1-CPU worker nodes, an MLflow server, `noharm run
    --address`. One worker node is removed while a trial runs on it, a fresh node is added, then the other
    original node leaves too: Tune's FailureConfig retries the lost trials elsewhere, the sweep exits 0, every
    key is FINISHED exactly once, the lost attempts end FAILED (not RUNNING), and the new node runs trials.
    A second driver is refused meanwhile."""
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)  # the cluster's processes are children of this one: they carry the mark
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = marked_env(env_with_site(install_testkit(tmp_path_factory.getbasetemp() / "sweep-testkit")), mark)
    temp = Path(tempfile.mkdtemp(prefix="nh-cl-", dir="/tmp"))  # short: Ray's socket paths live here
    (temp / "ray").mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(temp))  # the cluster's address file goes here, not to /tmp/ray
    suite = write_suite(tmp_path / "nodes.yaml", name="nodes", seeds=[0, 1, 2, 3], methods=["erm", "group-models"],
                        datasets=[{"name": "adult", "attributes": ["sex"]}], hparams={"epochs": 4},
                        selectors=["greedy"], max_concurrent=3, retries=2)
    server, url, store = start_mlflow_server(tmp_path, env)
    cluster = driver = second = None
    try:
        # Dead nodes are noticed in about a second instead of Ray's default 15 s.
        cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
            "num_cpus": 0, "temp_dir": str(temp), "include_dashboard": False, "node_ip_address": "127.0.0.1",
            "_system_config": {"health_check_period_ms": 300, "health_check_failure_threshold": 3}})
        lost = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        other = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        wait_healthy(url, server)
        cmd = [sys.executable, "-m", "noharm.bench.cli", "run", str(suite), "--out", str(tmp_path / "out"),
               "--address", cluster.address, "--tracking-uri", url, "--quiet"]
        driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = MlflowClient(url)
        wait_running_on(client, "nodes", lost.node_id, driver)
        # A second driver, started while the first holds the lease: refused (it runs alongside).
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_running_on(client, "nodes", lost.node_id, driver)
        cluster.remove_node(lost, allow_graceful=False)
        # A node joins mid-sweep. With reuse_actors Tune keeps feeding the surviving node's actor, so to make
        # the new node's share certain (not a race with fast trials) the other original node leaves too once
        # the new one is up: the rest of the sweep can only run on the node that joined.
        added = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        wait_running_on(client, "nodes", other.node_id, driver)
        cluster.remove_node(other, allow_graceful=False)
        second_out, second_err = second.communicate(timeout=120)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        for proc in (driver, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        if cluster is not None:
            cluster.shutdown()
        server.terminate()
        server.wait(timeout=30)
        stop_marked(mark)
        shutil.rmtree(temp, ignore_errors=True)
    assert not marked_pids(mark)
    assert driver.returncode == 0, stderr[-3000:]
    assert "erm + greedy" not in stdout and "group-models + greedy" in stdout
    assert second.returncode == 2 and "is already being run by another driver" in second_err, second_err[-2000:]
    assert "lease tag 'noharm.lease.nodes'" in second_err and second_err.count("\n") == 1

    with sqlite3.connect(store) as con:
        rows = con.execute("""
            select t_stage.value, t_key.value, t_node.value, r.status from runs r
            join tags t_stage on t_stage.run_uuid = r.run_uuid and t_stage.key = 'noharm.stage'
            join tags t_key on t_key.run_uuid = r.run_uuid and t_key.key = 'noharm.key'
            join tags t_node on t_node.run_uuid = r.run_uuid and t_node.key = 'noharm.node'""").fetchall()
        lease_left = con.execute("select count(*) from experiment_tags where key like 'noharm.lease.%'").fetchone()[0]
    finished = Counter((stage, key) for stage, key, _, status in rows if status == "FINISHED")
    assert Counter(stage for stage, _ in finished) == {"evaluate": 8, "compose": 4}
    assert set(finished.values()) == {1}, "a key FINISHED more than once"
    statuses = Counter(status for *_, status in rows)
    assert statuses["RUNNING"] == 0 and set(statuses) <= {"FINISHED", "FAILED"}
    lost_runs = [(stage, key) for stage, key, node, status in rows if node == lost.node_id and status == "FAILED"]
    assert lost_runs, "the trial that ran on the removed node did not end FAILED"
    for stage_key in lost_runs:  # ... and its key was retried elsewhere
        assert finished[stage_key] == 1
        assert any(node != lost.node_id for s, k, node, status in rows if (s, k) == stage_key and status == "FINISHED")
    assert any(node == added.node_id and status == "FINISHED" for *_, node, status in rows), \
        f"the node added mid-sweep ({added.node_id}, lost {lost.node_id}) got no work: {rows}"
    assert lease_left == 0  # the driver gave its lease back
