"""Checks a sweep makes before it creates anything: each bad setting or dead service is one line, in seconds.

`noharm run` calls `preflight` before it makes the output folder, the MLflow store
or Ray's temp folder, so a failed start leaves nothing behind. Every check raises
`ConfigError` (exit 2) with what is wrong, where, and what to do:

- the tracking URI has a scheme MLflow can store runs in (no `file://`: MLflow 3 keeps
  the file store read-only) and, for a server, answers within `timeout` seconds;
- the experiment name is not empty;
- `--address` names a Ray cluster that answers within `timeout` seconds (`auto` needs
  a running cluster on this machine; `ray://` needs `ray[client]`);
- an SQLite store is in --out or in a folder that exists and, when it exists, is an SQLite database.

Ray's own connection attempts wait minutes for a dead address (it retries the GCS
for 60 s and more); a TCP connect with a deadline says the same in seconds.
"""

from __future__ import annotations

import socket
from pathlib import Path

from noharm.bench.errors import ConfigError
from noharm.bench.tracking import CONNECT_TIMEOUT, check_sqlite_store, check_tracking_server, check_tracking_uri


def check_experiment(name: str) -> None:
    if not name or not name.strip():
        raise ConfigError("the MLflow experiment name is empty; give --experiment NAME or leave it out "
                          "(default: the suite's name)")


def check_ray_address(address: str | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """A cluster answers at `address` (host:port, auto, or ray://host:port) within `timeout` seconds."""
    if not address:
        return
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (what `ray[client]` adds)
        except ImportError:
            raise ConfigError(f"--address {address}: Ray Client is not installed; pip install 'ray[client]'") from None
        hostport = address.removeprefix("ray://")
        default_port = 10001
    elif address == "auto":
        hostport = _current_cluster()
        if not hostport:
            raise ConfigError("--address auto: no Ray cluster is running on this machine; start one with "
                              "`ray start --head` or leave --address out (local Ray)")
        default_port = 6379
    else:
        hostport, default_port = address, 6379
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, str(default_port)
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, auto or ray://HOST:PORT") from None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=timeout):
            return
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"--address {address}: no Ray cluster answers at {host}:{port_number} ({why}); "
                          "check the address, start the head node (`ray start --head`), or leave --address out"
                          ) from None


def _current_cluster() -> str | None:
    """The address `auto` means ($RAY_ADDRESS, else what `ray start --head` here left), found the way
    `ray.init(address="auto")` finds it; None when there is none."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None


def check_out(out: Path) -> None:
    """--out is a folder or can be one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder (it is created when missing)")


def check_store_folder(uri: str, out: Path) -> None:
    """An SQLite store outside --out must be in a folder that exists (the sweep creates only --out)."""
    if not uri.startswith("sqlite:///"):
        return
    folder = Path(uri.removeprefix("sqlite:///")).absolute().parent
    if folder != out.absolute() and not folder.is_dir():
        raise ConfigError(f"the folder of tracking store {uri!r} does not exist; create {str(folder)!r} or "
                          "fix --tracking-uri")


def preflight(uri: str, experiment: str, address: str | None, out: Path) -> None:
    """Every check above, cheapest first (see the module docstring)."""
    check_experiment(experiment)
    check_tracking_uri(uri)
    check_out(out)
    check_store_folder(uri, out)
    check_sqlite_store(uri)
    check_tracking_server(uri)
    check_ray_address(address)
