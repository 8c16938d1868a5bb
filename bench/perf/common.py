"""Shared bits of the hand-run benchmarks: machine description and appending to RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """One line: date, CPU model, cores, Python and torch versions."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; torch {torch.__version__}")


def append_results(title: str, body: str) -> None:
    """Append a dated section to bench/perf/RESULTS.md (creating it with a heading)."""
    if not RESULTS.exists():
        RESULTS.write_text("# Performance results\n\nAppended by the scripts in bench/perf/ (run by hand).\n")
    with RESULTS.open("a") as f:
        f.write(f"\n## {title}\n\n{machine()}\n\n{body.rstrip()}\n")
    print(f"appended to {RESULTS}")
