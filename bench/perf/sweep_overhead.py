"""Overhead of `noharm run` (Ray Tune + MLflow) against a plain sequential loop over `bench/trial.py`.

The same N small trials (ERM on digits-shift, CNN, 16 px, 1 epoch, seeds 0..N-1)
run three ways in one go:
  loop   a plain Python loop calling `run_trial` (one thread, like a 1-CPU trial);
  run1   `noharm run` with 1 concurrent trial;
  run2   `noharm run` with 2 concurrent trials of 1 CPU each.
Each `noharm run` is timed as a whole command (Python start-up, MLflow store creation, Ray start,
worker start-up, every trial logged with its artifacts, shut-down), and its trial phase is read
from MLflow (first run's start to last run's end). Per-trial overhead = (trial phase with 1
concurrent - loop) / N; the rest of the command is a fixed cost, shown apart (the rerun of the
finished suite, which needs no Ray, and a local Ray start are timed too).
Goals: per-trial overhead under 0.5 s; 2 concurrent 1-CPU trials close to 2x faster than 1.

Optionally (`--bench`) also times the main job, `noharm bench` (what `make bench` runs), into a
fresh folder.

Run by hand: `.venv/bin/python bench/perf/sweep_overhead.py [-n 16] [--bench]`; appends to bench/perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from noharm.bench.perf.common import append_results

HPARAMS = {"backbone": "cnn", "epochs": 1, "batch_size": 256}
OPTIONS = {"image_size": 16}


def suite_file(folder: Path, n: int) -> Path:
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump({
        "name": "overhead", "seeds": list(range(n)), "methods": ["erm"],
        "datasets": [{"name": "digits-shift", "attributes": ["style"], "options": OPTIONS, "hparams": HPARAMS}],
        "search": {"trials": 0}, "selectors": [], "resources": {"cpu": 1},
    }))
    return path


def plain_loop(n: int) -> float:
    """Seconds for N trials in a plain loop (one thread, as a 1-CPU Ray trial gets)."""
    import torch

    from noharm.bench.trial import TrialConfig, run_trial

    torch.set_num_threads(1)
    run_trial(TrialConfig(dataset="digits-shift", attribute="style", method="erm", seed=0, hparams=HPARAMS,
                          dataset_options=OPTIONS))  # warm-up: imports and first-call costs, as a reused actor has
    start = time.perf_counter()
    for seed in range(n):
        run_trial(TrialConfig(dataset="digits-shift", attribute="style", method="erm", seed=seed, hparams=HPARAMS,
                              dataset_options=OPTIONS))
    return time.perf_counter() - start


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


RAY_START = """
import sys, time
from pathlib import Path
from noharm.bench.sweep.run import prepare_environment, start_ray
prepare_environment(None, Path(sys.argv[1]))
import ray
t = time.perf_counter()
start_ray(None)
ray.shutdown()
print(time.perf_counter() - t)
"""


def ray_start_seconds(folder: Path) -> float:
    """Seconds to start (and stop) the local Ray a sweep uses."""
    done = subprocess.run([sys.executable, "-c", RAY_START, str(folder)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def trial_phase(out: Path) -> float:
    """Seconds from the first MLflow run's start to the last one's end, in a sweep's local store."""
    from noharm.bench.tracking import Tracker, default_uri

    tracker = Tracker.open(default_uri(out), "overhead")
    runs = tracker.runs(suite="overhead", status="FINISHED")
    return (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000


def noharm(*args: str) -> list[str]:
    return [sys.executable, "-m", "noharm.bench.cli", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=16, help="number of trials")
    parser.add_argument("--bench", action="store_true", help="also time `noharm bench` (the make bench job)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nh-perf-", dir="/tmp") as tmp:
        folder = Path(tmp)
        suite = suite_file(folder, args.n)
        loop = plain_loop(args.n)
        print(f"loop: {loop:.1f} s", flush=True)
        run1 = timed(noharm("run", str(suite), "--out", str(folder / "c1"), "--max-concurrent", "1", "--quiet"))
        print(f"run, 1 concurrent: {run1:.1f} s", flush=True)
        fixed = timed(noharm("run", str(suite), "--out", str(folder / "c1"), "--quiet"))
        print(f"run, all trials already finished (fixed cost): {fixed:.1f} s", flush=True)
        ray_start = ray_start_seconds(folder / "raystart")
        print(f"local Ray start: {ray_start:.1f} s", flush=True)
        run2 = timed(noharm("run", str(suite), "--out", str(folder / "c2"), "--max-concurrent", "2", "--quiet"))
        print(f"run, 2 concurrent: {run2:.1f} s", flush=True)
        bench = timed(noharm("bench", "--out", str(folder / "bench"))) if args.bench else None

        span1, span2 = trial_phase(folder / "c1"), trial_phase(folder / "c2")

    n = args.n
    per_trial = (span1 - loop) / n
    lines = [
        f"N = {n} trials: ERM on digits-shift (CNN, 16 px, 1 epoch, batch 256), seeds 0..{n - 1}, 1 CPU each.",
        "",
        "| way | command wall (s) | trial phase (s) | per trial (s) |",
        "|---|---|---|---|",
        f"| plain loop over `run_trial` (1 thread, warmed up) | {loop:.1f} | {loop:.1f} | {loop / n:.2f} |",
        f"| `noharm run`, 1 concurrent | {run1:.1f} | {span1:.1f} | {span1 / n:.2f} |",
        f"| `noharm run`, 2 concurrent | {run2:.1f} | {span2:.1f} | {span2 / n:.2f} |",
        f"| `noharm run` of the finished suite (start-up, MLflow queries; no Ray) | {fixed:.1f} | | |",
        f"| local Ray start + stop | {ray_start:.1f} | | |",
        "",
        f"- per-trial overhead of the sweep (trial phase with 1 concurrent - loop) / N: {per_trial:.2f} s "
        f"(goal < 0.5 s); it includes the Ray worker's first imports, amortised",
        f"- fixed cost of a command (wall - trial phase): {run1 - span1:.1f} s with 1 concurrent, "
        f"{run2 - span2:.1f} s with 2",
        f"- speed-up from 2 concurrent 1-CPU trials: trial phase {span1 / span2:.2f}x, whole command "
        f"{run1 / run2:.2f}x (goal near 2x)",
        f"- whole command against the loop: {run1 / loop:.2f}x the loop's time with 1 concurrent",
        f"- load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (the 2 cores are shared)",
    ]
    if bench is not None:
        lines.append(f"- `noharm bench` (the `make bench` job, default suite, fresh folder): {bench:.0f} s "
                     f"({bench / 60:.1f} min; budget 15 min)")
    body = "\n".join(lines)
    print(body)
    append_results("Sweep overhead (bench/perf/sweep_overhead.py)", body)


if __name__ == "__main__":
    main()
