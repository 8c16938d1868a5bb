"""Concise live progress of a sweep: trials done / running / failed / pending, elapsed time and an ETA.

A Ray Tune callback that reads the sweep searcher's counters and prints one
status line (rewritten in place on a terminal, at most every `interval`
seconds otherwise) plus one line per failure. Ray's own tables and logs stay
off (`verbose=0`, `log_to_driver=False`).

The ETA (`estimate_remaining`) prices every trial still to run at the measured duration of trials of
the same kind (training, copying a search run, composing) on the same cell, else on the same method and
dataset, the same method, the same dataset, the same kind, and divides the sum by the number of trials
that run at once. The first `concurrency` trials to finish (each worker's first, which also starts
Python, torch and the actor) are left out; until `concurrency` more have finished it says "ETA –". The
search runs first and visits every searched cell early, so after the first round the estimate rests
on each cell's own timings.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from typing import Iterable

from ray.tune import Callback


def format_elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:2d}:{s:02d}"


def _fallbacks(kind: str, cell: str) -> list[tuple]:
    """Ever coarser groups a trial's duration is read from: its cell, its method on its dataset, ..."""
    label, _, method = cell.rpartition("/")
    dataset = label.split("/", 1)[0]
    return [(kind, cell), (kind, dataset, method), (kind, "method", method), (kind, "dataset", dataset), (kind,)]


def estimate_remaining(done: Iterable[tuple[str, str, float]], todo: Iterable[tuple[str, str]],
                       running: Iterable[tuple[str, str, float]], concurrency: int,
                       min_done: int | None = None) -> float | None:
    """Seconds until the trials `todo` [(kind, cell id)] and `running` [(kind, cell id, seconds so far)] are
    done, from the durations `done` [(kind, cell id, seconds)] of finished trials, `concurrency` at a time.

    None ("ETA –") while fewer than `min_done` (default: `concurrency`, at least 2) trials have finished.
    A kind with no finished trial yet (compositions early on) is priced at the shortest trial measured.
    """
    done = list(done)
    if len(done) < (min_done if min_done is not None else max(2, concurrency)):
        return None
    groups: dict[tuple, list[float]] = defaultdict(list)
    for kind, cell, seconds in done:
        for group in _fallbacks(kind, cell):
            groups[group].append(seconds)
    floor = min(seconds for _, _, seconds in done)

    def duration(kind: str, cell: str) -> float:
        for group in _fallbacks(kind, cell):
            if group in groups:
                return statistics.fmean(groups[group])
        return floor

    total = sum(duration(kind, cell) for kind, cell in todo)
    total += sum(max(duration(kind, cell) - elapsed, 0.0) for kind, cell, elapsed in running)
    return total / max(1, concurrency)


def status_line(counts: dict, elapsed: float, eta: float | None | str = "") -> str:
    """`[ 2:31, ETA 12:40] 40 done, 2 running, 1 failed, 57 pending (12 already in MLflow) | search 24/24 ...`.

    `eta`: seconds left, None while unknown ("ETA –"), "" to leave it out.
    """
    done = sum(c.done for c in counts.values())
    skipped = sum(c.skipped for c in counts.values())
    failed = sum(c.failed + c.blocked for c in counts.values())
    running = sum(c.running for c in counts.values())
    pending = sum(c.pending for c in counts.values())
    stages = " ".join(f"{name} {c.done + c.skipped + c.failed + c.blocked}/{c.planned}"
                      for name, c in counts.items() if c.planned)
    extra = f" ({skipped} already in MLflow)" if skipped else ""
    clock = format_elapsed(elapsed)
    if eta != "":
        clock += ", ETA " + ("–" if eta is None else format_elapsed(eta).strip())
    return (f"[{clock}] {done} done, {running} running, {failed} failed, "
            f"{pending} pending{extra} | {stages}")


class Progress(Callback):
    """Prints the searcher's counters while Tune runs."""

    def __init__(self, searcher, interval: float | None = None, quiet: bool = False, concurrency: int = 1):
        self.searcher = searcher
        self.concurrency = concurrency
        self._estimated = False
        self.start = time.monotonic()
        self.quiet = quiet
        self.interval = interval
        self._last_print = 0.0
        self._last_line = ""
        self._last_state: tuple = ()
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
        eta = self.eta(force)
        if eta is not None and eta != "" and not self._estimated:  # said once, on a line of its own
            self._estimated = True
            if self._inline:
                stream.write("\n")
                self._inline = False
            stream.write(f"estimate: about {format_elapsed(now - self.start + eta).strip()} in all, "
                         f"{format_elapsed(eta).strip()} from now ({self.concurrency} at a time, from "
                         f"{len(self.searcher.timings)} trials so far; the progress line keeps it current)\n")
        line = status_line(self.searcher.counts, now - self.start, eta)
        interval = self.interval if self.interval is not None else (1.0 if tty else 15.0)
        # Without a terminal a line is printed when the counts change or the ETA becomes known.
        state = (line.split("] ", 1)[-1], eta is None)
        changed = state != self._last_state
        if not force and (now - self._last_print < interval or not (changed or tty)):
            return
        if tty:
            stream.write("\r\033[K" + line)
            self._inline = True
        else:
            stream.write(line + "\n")
        stream.flush()
        self._last_print, self._last_line, self._last_state = now, line, state

    def eta(self, final: bool = False) -> float | None | str:
        """Seconds left (None: not known yet); "" for a searcher that keeps no timings, or at the end."""
        if final or not hasattr(self.searcher, "remaining"):
            return ""
        todo, running = self.searcher.remaining()
        # The first trial of each worker also starts Python, torch and Ray's actor: not what the others cost.
        return estimate_remaining(self.searcher.timings[self.concurrency:], todo, running, self.concurrency)

    def finish(self) -> None:
        self.show(force=True)
        if self._inline and not self.quiet:
            self._stream().write("\n")
            self._inline = False

    # Tune callback hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        if hasattr(self.searcher, "trial_started"):
            self.searcher.trial_started(trial.trial_id)
        self.show()

    def on_step_end(self, iteration, trials, **info):
        self.show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.show()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.show()
