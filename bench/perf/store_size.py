"""Artifact store size per run of a sweep, by stage and by artifact.

Run by hand from the repository root (give PYTHONPATH of another checkout to measure it instead):

    .venv/bin/python -m bench.perf.store_size SUITE.yaml [--out DIR] [--label before] [--code /other/checkout]

Runs `noharm run SUITE --out DIR` (unless DIR already holds a finished sweep), then sums the files
under DIR/artifacts per run, grouped by the run's stage and by artifact name. Appends a table to
bench/perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


def sizes(out: Path) -> tuple[dict[str, int], dict[tuple[str, str], int], dict[str, int]]:
    """(runs per stage, bytes per (stage, artifact), bytes per stage) of the sweep in `out`."""
    with sqlite3.connect(out / "mlflow.db") as con:
        stage_of = dict(con.execute("select run_uuid, value from tags where key = 'noharm.stage'").fetchall())
    runs: dict[str, int] = defaultdict(int)
    for stage in stage_of.values():
        runs[stage] += 1
    by_artifact: dict[tuple[str, str], int] = defaultdict(int)
    by_stage: dict[str, int] = defaultdict(int)
    root = out / "artifacts"
    for f in root.rglob("*"):
        # <artifacts>/[<experiment>/]<run id>/artifacts/<name>: the run is the part MLflow knows.
        run = next((p for p in f.relative_to(root).parts if p in stage_of), None)
        if run is None or not f.is_file():
            continue
        by_artifact[(stage_of[run], f.name)] += f.stat().st_size
        by_stage[stage_of[run]] += f.stat().st_size
    return dict(runs), dict(by_artifact), dict(by_stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite")
    parser.add_argument("--out", default="/tmp/noharm-store-size")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--code", help="PYTHONPATH of the checkout whose `noharm run` to measure (default: this one)")
    args = parser.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    if not (out / "mlflow.db").exists():
        cmd = [sys.executable, "-m", "noharm.bench.cli", "run", args.suite, "--out", str(out), "--max-concurrent", "1"]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        if args.code:
            env["PYTHONPATH"] = args.code
        subprocess.run(cmd, check=True, env=env, cwd=args.code or None)
    wall = time.perf_counter() - t0
    runs, by_artifact, by_stage = sizes(out)
    rows = ["| stage | runs | KB per run | of which (KB per run) |", "|---|---|---|---|"]
    for stage in ("search", "evaluate", "compose"):
        n = runs.get(stage, 0)
        if not n:
            continue
        parts = ", ".join(f"{name} {b / n / 1024:.1f}" for (s, name), b in sorted(by_artifact.items()) if s == stage)
        rows.append(f"| {stage} | {n} | {by_stage.get(stage, 0) / n / 1024:.1f} | {parts} |")
    total_runs = sum(runs.values())
    total = sum(by_stage.values())
    rows.append(f"| all | {total_runs} | {total / max(1, total_runs) / 1024:.1f} | total {total / 2**20:.2f} MB |")
    body = (f"{args.label}: `{args.suite}` into {out} ({wall:.0f} s wall, 0 if it existed)\n\n" + "\n".join(rows))
    print(body)
    from noharm.bench.perf.common import append_results

    append_results(f"store_size.py: artifact store per run ({args.label})", body)


if __name__ == "__main__":
    main()
