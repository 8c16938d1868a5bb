"""A real PostgreSQL for tests, from the `pgserver` wheel's binaries, and an MLflow server on it.

`postgres()` runs `initdb` and `postgres` from the wheel in a temp folder, listening on
127.0.0.1 at a free port (no Unix socket), and yields a SQLAlchemy URL base
`postgresql+psycopg://postgres@127.0.0.1:PORT`; `create_database` adds a database to it.
`mlflow_server(backend, folder, env)` starts `mlflow server` on that database with its
artifacts in `folder` and yields its URL. Both stop what they started on exit, even after a
failure: PostgreSQL by its process, the MLflow server by its own process group (its workers).

PostgreSQL refuses to run as root (CI runs as root): then the wheel's install tree is copied
into that folder and both programs run as the unprivileged user `nobody`, so nothing outside
it changes (pgserver's own launcher would add a system user and widen permissions up to
`/`). The server runs with fsync off: a test database needs no durability.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.plugins import free_port

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


class PostgresUnavailable(RuntimeError):
    """The wheel is not installed or its server cannot start here (the message says why)."""


def _wheel_install() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("psycopg") is None:
        raise PostgresUnavailable("the pgserver wheel or psycopg is not installed (pip install -e '.[test]')")
    # Found, not imported: importing pgserver sets up its own launcher, which these tests do not use.
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _as_user(*owned: Path) -> dict:
    """Popen arguments that run PostgreSQL as `nobody` when we are root (it refuses root), else nothing;
    `nobody` then owns the paths `owned`."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return {}
    import pwd

    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no user 'nobody' to run PostgreSQL as") from None
    for path in owned:
        os.chown(path, user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def postgres(timeout: float = 60) -> Iterator[str]:
    """PostgreSQL on 127.0.0.1 in a fresh temp folder (removed on exit); yields
    `postgresql+psycopg://postgres@127.0.0.1:PORT`."""
    install = _wheel_install()
    # Its own folder in the system temp folder, open for traversal: pytest's tmp_path is private to
    # root, and PostgreSQL may run as `nobody` (see the module docstring).
    folder = Path(tempfile.mkdtemp(prefix="noharm-pg-"))
    try:
        folder.chmod(0o755)
        yield from _serve(install, folder, timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve(install: Path, folder: Path, timeout: float) -> Iterator[str]:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # `nobody` may not be able to reach the venv (e.g. under /root): run a private copy, with the
        # wheel's bundled libraries where the binaries' rpath looks ($ORIGIN/../../../pgserver.libs).
        libs = install.parent.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, folder / "wheel" / "pgserver.libs", symlinks=True)
        install = Path(shutil.copytree(install, folder / "wheel" / "pgserver" / "pginstall", symlinks=True))
    data, log = folder / "data", folder / "postgres.log"
    data.mkdir()
    log.touch()
    user = _as_user(data, log)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    init = subprocess.run([str(install / "bin" / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--encoding=UTF8", "--no-sync"], capture_output=True, text=True, env=env, cwd=folder,
                          timeout=timeout, **user)
    if init.returncode != 0:
        raise PostgresUnavailable(f"initdb from the pgserver wheel failed: {(init.stderr or init.stdout)[-500:]}")
    port = free_port()
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [str(install / "bin" / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", "",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder, **user)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    try:
        _wait_for_postgres(url, server, log, timeout)
        yield url
    finally:
        server.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown: a test database keeps nothing
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def _wait_for_postgres(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise PostgresUnavailable(f"PostgreSQL from the pgserver wheel exited: {log.read_text()[-500:]}")
        try:
            psycopg.connect(_libpq(url, "postgres"), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"PostgreSQL did not accept connections in {timeout} s") from None
            time.sleep(0.2)


def _libpq(url: str, database: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://") + f"/{database}"


def create_database(url: str, name: str) -> str:
    """Create database `name` on the server at `url`; returns its SQLAlchemy URI."""
    import psycopg

    with psycopg.connect(_libpq(url, "postgres"), autocommit=True) as con:
        con.execute(f'create database "{name}"')
    return f"{url}/{name}"


def query(uri: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of `sql` (with `params` for its %s) on the database of SQLAlchemy URI `uri`, committed."""
    import psycopg

    with psycopg.connect(uri.replace("postgresql+psycopg://", "postgresql://")) as con:
        cursor = con.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path, env: dict, timeout: float = 120) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with `backend` as its store and artifacts under `folder`; yields its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "mlflow-server.log"
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend, "--artifacts-destination", str(folder / "artifacts")],
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=folder,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(f"the MLflow server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the MLflow server did not answer in {timeout} s"
            time.sleep(0.3)
        yield url
    finally:
        # Its own session: the gunicorn/uvicorn workers it started go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
