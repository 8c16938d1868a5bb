"""One driver per (tracking store, experiment, suite): a second `noharm run` is refused, not merged.

Two drivers on the same suite would both propose the same keys and both end runs
FINISHED (and each would mark the other's live runs KILLED as stale). So a driver
takes a lease before it reads or writes anything:

- a local SQLite store: an exclusive OS lock (filelock's `lock_descriptor`: `flock` on
  POSIX, `LockFileEx` on Windows) on a lock file beside the database
  (`<db>.<experiment>.lock`). The OS drops it when the holder exits, even on `kill -9`,
  so a lock is never stale. The file holds the holder's description (after byte 0,
  which Windows keeps locked).
- any other store (an MLflow server, a shared database): a lease record in the
  experiment, the tag `noharm.lease.<suite>` = JSON {driver, host, machine, pid,
  pid_started, since, heartbeat}. The holder renews the heartbeat every `HEARTBEAT`
  seconds from a daemon thread. A new driver takes the lease over at once when its
  holder is provably gone:
  * on the same machine (same host name, boot and process namespace): the holder's
    process (pid and creation time, so a reused pid does not count) no longer runs;
    while it runs, the lease is its own however old the heartbeat;
  * on another machine: its heartbeat is older than `STALE_AFTER` seconds (clocks
    are assumed in sync to a few seconds, as NTP keeps them).
  MLflow has no compare-and-set, so a taker writes its record, waits `SETTLE` seconds
  and reads it back: of two drivers racing, the last writer reads its own record and
  the other reads a stranger's and backs off. A holder whose beat finds a stranger's
  record (it was taken over after its heartbeats stopped) stops renewing and warns.

The refused driver gets `LeaseHeld` (a ConfigError: one line naming the holder, since
when, and when its lease counts as stale; exit 2).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from filelock import lock_descriptor, unlock_descriptor
from mlflow.exceptions import MlflowException

from noharm.analysis.record import TAG
from noharm.bench.errors import ConfigError
from noharm.bench.tracking import Tracker

# A beat is two MLflow calls: 71 ms (median) through a server on PostgreSQL on a machine at load 15, at most
# 1.4 % of one thread every 5 s (bench/perf/lease_cost.py, RESULTS.md).
HEARTBEAT = 5.0
STALE_AFTER = 20.0  # four beats missed
SETTLE = 1.0
# Creation times of one process read twice agree to well under this (seconds).
CREATE_TIME_SLACK = 1.0


class LeaseHeld(ConfigError):
    """Another driver runs this suite in this experiment."""


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def machine_id() -> str:
    """This host name, plus on Linux its boot and PID namespace: where it matches, a pid names one process."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


def process_started(pid: int) -> float | None:
    """The creation time of process `pid`, None when it does not run (a zombie has ended too)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None


def is_running(pid: int, started: float | None) -> bool:
    """Whether the process `pid` created at `started` still runs (a reused pid is another process)."""
    try:
        now_started = process_started(pid)
    except psutil.Error:  # not ours to inspect (AccessDenied): it exists, so assume it is the holder
        return True
    return now_started is not None and (started is None or abs(now_started - started) < CREATE_TIME_SLACK)


def this_holder(driver: str | None = None) -> dict:
    """The lease record fields that name this process (a fresh driver id unless given)."""
    pid = os.getpid()
    return {"driver": driver or uuid.uuid4().hex[:8], "host": socket.gethostname(), "machine": machine_id(),
            "pid": pid, "pid_started": process_started(pid), "since": time.time()}


def describe(record: dict) -> str:
    """'pid 12 on host, driver ab12cd34, since 2026-01-02 03:04:05 UTC' from a lease record."""
    if "pid" not in record:  # a record of an older noharm
        return str(record.get("holder") or "another driver")
    text = f"pid {record['pid']} on {record.get('host', '?')}"
    if record.get("driver"):
        text += f", driver {record['driver']}"
    if record.get("since"):
        text += f", since {when(float(record['since']))}"
    return text


@dataclass
class FileLease:
    """An exclusive OS lock on `path`, held until `release` or the process ends."""

    path: Path
    fd: int | None = None

    def acquire(self, what: str) -> "FileLease":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            locked = lock_descriptor(fd, blocking=False)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.lseek(fd, 1, os.SEEK_SET)
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LeaseHeld(f"{what} is already being run by another driver ({holder}; lock {self.path}, "
                            "free as soon as that process ends): wait for it to finish or stop it, then rerun")
        holder = {k: v for k, v in this_holder().items() if k != "driver"}  # the pid names a lock's holder
        text = b"\n" + describe(holder).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text)
        os.ftruncate(fd, len(text))  # written first, then cut: a previous holder's longer text goes
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 1)
            unlock_descriptor(self.fd)
            os.close(self.fd)
            self.fd = None


@dataclass
class RecordLease:
    """A lease record (experiment tag) with a heartbeat, for stores shared over the network."""

    tracker: Tracker
    suite: str
    driver: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    heartbeat: float = HEARTBEAT
    stale_after: float = STALE_AFTER
    settle: float = SETTLE
    lost: dict | None = None  # the record that replaced ours, when this driver was taken over
    _holder: dict = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def tag(self) -> str:
        return f"{TAG}lease.{self.suite}"

    def read(self) -> dict | None:
        value = self.tracker.client.get_experiment(self.tracker.experiment_id).tags.get(self.tag)
        try:
            record = json.loads(value) if value else None
        except ValueError:
            return None
        return record if isinstance(record, dict) and (record.get("driver") or record.get("holder")) else None

    def write(self, attempts: int = 5) -> None:
        """Write this driver's record. Two first writers can collide on the store's unique key
        (SQL stores insert-or-update non-atomically): the loser retries, now as an update."""
        for attempt in range(attempts):
            try:
                self.tracker.client.set_experiment_tag(
                    self.tracker.experiment_id, self.tag, json.dumps({**self._holder, "heartbeat": time.time()}))
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def acquire(self, what: str) -> "RecordLease":
        current = self.read()
        if not self.takeable(current):
            self._refuse(what, current)
        self._holder = this_holder(self.driver)
        self.write()
        time.sleep(self.settle)  # a racing driver's write lands in this window; the last writer wins
        current = self.read()
        if not self.ours(current):
            self._refuse(what, current)
        self._thread = threading.Thread(target=self._beat, name="noharm-lease", daemon=True)
        self._thread.start()
        return self

    def ours(self, record: dict | None) -> bool:
        return bool(record) and record.get("driver") == self.driver

    def takeable(self, record: dict | None) -> bool:
        """No record, or its holder is provably gone (see the module docstring)."""
        if record is None:
            return True
        if record.get("machine") == machine_id() and "pid" in record:
            return not is_running(int(record["pid"]), record.get("pid_started"))
        return time.time() - float(record.get("heartbeat", 0)) > self.stale_after

    def _refuse(self, what: str, record: dict | None) -> None:
        record = record or {}
        head = (f"{what} is already being run by another driver ({describe(record)}; lease tag {self.tag!r}")
        if record.get("machine") == machine_id() and "pid" in record:
            raise LeaseHeld(f"{head}, its process runs on this machine); it is taken over as soon as pid "
                            f"{record['pid']} ends: wait for it to finish or stop it, then rerun")
        beat = float(record.get("heartbeat", time.time()))
        raise LeaseHeld(f"{head}, last heartbeat {max(0.0, time.time() - beat):.0f} s ago); it counts as stale "
                        f"and is taken over at {when(beat + self.stale_after)} if its heartbeats (every "
                        f"{self.heartbeat:.0f} s) stop: wait for it to finish or stop it, then rerun")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                current = self.read()
                if current is not None and not self.ours(current):
                    self.lost = current
                    print(f"noharm: warning: the lease {self.tag!r} was taken over by another driver "
                          f"({describe(current)}) after this driver's heartbeats stopped for over "
                          f"{self.stale_after:.0f} s; this driver goes on, and a key both finish counts once "
                          "in the tables",
                          file=sys.stderr, flush=True)
                    return
                self.write()
            except Exception:  # a blip of the server: the next beat tries again, well before the lease is stale
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self.ours(self.read()):
                self.tracker.client.delete_experiment_tag(self.tracker.experiment_id, self.tag)
        except Exception:  # the server went away: the record goes stale on its own
            pass


def lock_path(uri: str, experiment: str) -> Path | None:
    """The lock file of a local SQLite store (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///")).absolute()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-") or "experiment"
    return db.with_name(f"{db.name}.{name}.lock")


def lock_local_store(uri: str, experiment: str, suite: str) -> FileLease | None:
    """For a local SQLite store: its lock file, taken (LeaseHeld when another driver has it); else None."""
    path = lock_path(uri, experiment)
    if path is None:
        return None
    return FileLease(path).acquire(f"suite {suite!r} in experiment {experiment!r} of {uri}")


def lease_record(tracker: Tracker, experiment: str, suite: str) -> RecordLease:
    """For a shared store: the suite's lease record, taken (LeaseHeld when a live driver has it)."""
    return RecordLease(tracker, suite).acquire(f"suite {suite!r} in experiment {experiment!r} of {tracker.uri}")
