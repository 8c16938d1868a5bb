"""One driver per (tracking store, experiment, suite): a second `noharm run` is refused, not merged.

Two drivers on the same suite would both propose the same keys and both end runs
FINISHED (and each would mark the other's live runs KILLED as stale). So a driver
takes a lease before it reads or writes anything:

- a local SQLite store: an exclusive `flock` on a lock file beside the database
  (`<db>.<experiment>.lock`). The kernel drops it when the holder exits, even on
  `kill -9`, so a lock is never stale. The file holds the holder's description.
- any other store (an MLflow server, a shared database): a lease record in the
  experiment, the tag `noharm.lease.<suite>` = JSON {holder, heartbeat}. The holder
  renews the heartbeat every `HEARTBEAT` seconds from a daemon thread; a record
  whose heartbeat is older than `STALE_AFTER` belongs to a dead driver and is
  taken over. MLflow has no compare-and-set, so a taker writes its record, waits
  `SETTLE` seconds and reads it back: of two drivers racing, the last writer
  reads its own record and the other reads a stranger's and backs off.

The refused driver gets `LeaseHeld` (a ConfigError: one line naming the holder, exit 2).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from noharm.analysis.record import TAG
from noharm.bench.errors import ConfigError
from noharm.bench.tracking import Tracker

HEARTBEAT = 10.0
STALE_AFTER = 60.0
SETTLE = 1.0


class LeaseHeld(ConfigError):
    """Another driver runs this suite in this experiment."""


def describe_holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"


@dataclass
class FileLease:
    """An exclusive flock on `path`, held until `release` or the process ends."""

    path: Path
    fd: int | None = None

    def acquire(self, what: str) -> "FileLease":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LeaseHeld(f"{what} is already being run by another driver ({holder}; lock {self.path}); "
                            "wait for it to finish or stop it, then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, describe_holder().encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@dataclass
class RecordLease:
    """A lease record (experiment tag) with a heartbeat, for stores shared over the network."""

    tracker: Tracker
    suite: str
    holder: str = field(default_factory=lambda: f"{describe_holder()}, driver {uuid.uuid4().hex[:8]}")
    heartbeat: float = HEARTBEAT
    stale_after: float = STALE_AFTER
    settle: float = SETTLE
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
        return record if isinstance(record, dict) and record.get("holder") else None

    def write(self, attempts: int = 5) -> None:
        """Write this driver's record. Two first writers can collide on the store's unique key
        (SQL stores insert-or-update non-atomically): the loser retries, now as an update."""
        for attempt in range(attempts):
            try:
                self.tracker.client.set_experiment_tag(
                    self.tracker.experiment_id, self.tag,
                    json.dumps({"holder": self.holder, "heartbeat": time.time()}))
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def acquire(self, what: str) -> "RecordLease":
        current = self.read()
        if not self._free(current):
            self._refuse(what, current)
        self.write()
        time.sleep(self.settle)  # a racing driver's write lands in this window; the last writer wins
        current = self.read()
        if not current or current["holder"] != self.holder:
            self._refuse(what, current)
        self._thread = threading.Thread(target=self._beat, name="noharm-lease", daemon=True)
        self._thread.start()
        return self

    def _free(self, record: dict | None) -> bool:
        return record is None or time.time() - float(record.get("heartbeat", 0)) > self.stale_after

    def _refuse(self, what: str, record: dict | None) -> None:
        holder = record["holder"] if record else "another driver"
        raise LeaseHeld(f"{what} is already being run by another driver ({holder}; lease tag {self.tag!r}, "
                        f"taken over when its heartbeat is {self.stale_after:.0f} s old); wait for it to finish "
                        "or stop it, then rerun")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.write()
            except Exception:  # a blip of the server: the next beat tries again, well before the lease is stale
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self.read()
            if current and current["holder"] == self.holder:
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
