"""Concise live progress of a sweep: trials done / running / failed / pending and elapsed time.

A Ray Tune callback that reads the sweep searcher's counters and prints one
status line (rewritten in place on a terminal, at most every `interval`
seconds otherwise) plus one line per failure. Ray's own tables and logs stay
off (`verbose=0`, `log_to_driver=False`).
"""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


def format_elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:2d}:{s:02d}"


def status_line(counts: dict, elapsed: float) -> str:
    """`[ 2:31] 40 done, 2 running, 1 failed, 57 pending (12 already in MLflow) | search 24/24 ...`."""
    done = sum(c.done for c in counts.values())
    skipped = sum(c.skipped for c in counts.values())
    failed = sum(c.failed + c.blocked for c in counts.values())
    running = sum(c.running for c in counts.values())
    pending = sum(c.pending for c in counts.values())
    stages = " ".join(f"{name} {c.done + c.skipped + c.failed + c.blocked}/{c.planned}"
                      for name, c in counts.items() if c.planned)
    extra = f" ({skipped} already in MLflow)" if skipped else ""
    return (f"[{format_elapsed(elapsed)}] {done} done, {running} running, {failed} failed, "
            f"{pending} pending{extra} | {stages}")


class Progress(Callback):
    """Prints the searcher's counters while Tune runs."""

    def __init__(self, searcher, interval: float | None = None, quiet: bool = False):
        self.searcher = searcher
        self.start = time.monotonic()
        self.quiet = quiet
        self.interval = interval
        self._last_print = 0.0
        self._last_line = ""
        self._failures_shown = 0
        self._inline = False

    def _stream(self):
        return sys.stderr

    def _tty(self) -> bool:
        return self._stream().isatty()

    def show(self, force: bool = False) -> None:
        if self.quiet:
            return
        stream = self._stream()
        tty = self._tty()
        new_failures = self.searcher.failures[self._failures_shown:]
        if new_failures:
            if self._inline:
                stream.write("\n")
                self._inline = False
            for f in new_failures:
                stream.write(f"FAILED {f.stage} {f.what}: {f.error}\n")
            self._failures_shown += len(new_failures)
        now = time.monotonic()
        line = status_line(self.searcher.counts, now - self.start)
        interval = self.interval if self.interval is not None else (1.0 if tty else 15.0)
        changed = line.split("] ", 1)[-1] != self._last_line.split("] ", 1)[-1]
        if not force and (now - self._last_print < interval or not (changed or tty)):
            return
        if tty:
            stream.write("\r\033[K" + line)
            self._inline = True
        else:
            stream.write(line + "\n")
        stream.flush()
        self._last_print, self._last_line = now, line

    def finish(self) -> None:
        self.show(force=True)
        if self._inline and not self.quiet:
            self._stream().write("\n")
            self._inline = False

    # Tune callback hooks
    def on_step_end(self, iteration, trials, **info):
        self.show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.show()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.show()
