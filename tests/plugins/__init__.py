"""Helpers of the sweep tests: the test-only plugin, a local Ray, tiny suites, stopping only our processes."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
TESTKIT = "noharm_sweep_testkit"


def install_testkit(base: Path) -> Path:
    """Install the sweep testkit plugin (entry points) under `base` once per test session; returns its site dir."""
    from tests.plugin_install import install_plugin

    site = base / "site"
    if not (site / TESTKIT).is_dir():
        install_plugin(base, TESTKIT, (HERE / f"{TESTKIT}.py").read_text(),
                       {"noharm.methods": {"testkit": TESTKIT}, "noharm.datasets": {"testkit": TESTKIT}})
    return site


def env_with_site(site: Path) -> dict[str, str]:
    """This environment with the plugin first on PYTHONPATH, loopback-only local Ray, quiet tools."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(site), env.get("PYTHONPATH", "")] if p)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AIR_NEW_OUTPUT": "0"})
    env.pop("RAY_ADDRESS", None)
    return env


def write_suite(path: Path, **fields) -> Path:
    """A suite file from keyword fields (YAML-dumped)."""
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MARK = "NOHARM_TEST_MARK"


def marked_env(env: dict[str, str], mark: str) -> dict[str, str]:
    """`env` plus a marker variable every descendant process inherits (even after renaming itself)."""
    return {**env, MARK: mark}


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries our marker: exactly what our test started, nothing else."""
    needle = f"{MARK}={mark}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            out.append(int(entry.name))
    return out


def stop_marked(mark: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the processes carrying our marker (by pid, never by name)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked_pids(mark)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while marked_pids(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not marked_pids(mark):
            return
