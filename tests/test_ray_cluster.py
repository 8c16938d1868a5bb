"""`noharm run --address --tracking-uri`: a small suite on a Ray head node and an MLflow server that this
test starts on 127.0.0.1 (and stops): the cluster set-up the README describes, on one machine."""

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

from tests.plugins import (env_with_site, free_port, install_testkit, marked_env, marked_pids, stop_marked,
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
    store, shared = tmp_path / "server.db", tmp_path / "shared-artifacts"
    url = f"http://127.0.0.1:{free_port()}"
    server = None
    try:
        server = subprocess.Popen(
            [MLFLOW, "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
             "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(shared)],
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        head = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert head.returncode == 0, head.stderr[-2000:]
        wait_healthy(url, server)
        run = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(out), "--address", f"127.0.0.1:{port}",
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
