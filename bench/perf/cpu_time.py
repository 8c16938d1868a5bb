"""CPU seconds of a command and of every process it starts, orphans included (Linux).

Wall time on a shared machine says more about the other jobs than about the command; the CPU time of all
its processes does not. The command's descendants that outlive their parents (Ray's daemons, servers started
in their own session) are reparented here (a child subreaper) and reaped, so the kernel's children
accounting covers them too.

Run by hand: `.venv/bin/python bench/perf/cpu_time.py COMMAND [ARG ...]`, e.g.
`.venv/bin/python bench/perf/cpu_time.py .venv/bin/python -m pytest -q -p no:xdist tests/test_postgres_store.py`.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} COMMAND [ARG ...]")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("cpu_time.py: cannot become a child subreaper (Linux only)")
    t0 = time.monotonic()
    code = subprocess.run(sys.argv[1:]).returncode
    wall = time.monotonic() - t0
    while True:  # the orphans reparented here
        try:
            os.wait()
        except ChildProcessError:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"exit {code}; wall {wall:.1f} s; CPU {usage.ru_utime + usage.ru_stime:.1f} s (user {usage.ru_utime:.1f}, "
          f"system {usage.ru_stime:.1f}); load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
