"""`noharm report` time on a store of any size: a synthetic store grown from a real one, timed as a whole
command and profiled by phase.

Run by hand from the repository root:

    .venv/bin/python -m noharm.bench.perf.report_speed --source results/mlflow.db --experiment default --runs 5000

Copies the FINISHED evaluate and compose runs of the source experiment (tags, params, metrics) into a
new store as many times as needed to reach `--runs`, shifting `noharm.seed` by the number of source
seeds per copy so every copy is a new set of seeds (the tables get more seeds, not duplicate rows).
`--runs 0` reports on the source itself (stress runs and all). For each store: the wall time of the
whole `noharm report` command in a fresh process (Python start-up included; `--repeats` runs, median),
then `write_report` under cProfile with the share of the main phases (reading the store, tables, plots,
leaderboard). `--check-api` also writes the report through MLflow's search API instead of the SQL read
and says whether every file has the same bytes. Appends a section to bench/perf/RESULTS.md.
Stress runs are not copied into synthetic stores (they need their artifacts).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = {  # (file suffix, function name) -> phase of `analysis.report.write_report`
    ("collect.py", "sqlite_experiment_runs"): "store read (SQL)",
    ("collect.py", "search_all"): "MLflow search",
    ("collect.py", "collect"): "collect (search + tidy)",
    ("tables.py", "summarise"): "summary",
    ("tables.py", "write_table"): "table files",
    ("plots.py", "group_bars"): "group bar plots",
    ("plots.py", "pareto"): "pareto plots",
    ("plots.py", "stress_curves"): "stress plots",
    ("leaderboard.py", "write"): "leaderboard",
}


def grow(source_uri: str, experiment: str, target_uri: str, n_runs: int) -> int:
    """Copy the source's evaluate and compose runs into a new store until it holds `n_runs`; returns the count."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from noharm.analysis.collect import open_experiment, search_all

    client, exp = open_experiment(experiment, source_uri)
    runs = [r for r in search_all(client, exp.experiment_id)
            if r.info.status == "FINISHED" and r.data.tags.get("noharm.stage") in ("evaluate", "compose")]
    if not runs:
        raise SystemExit(f"no finished evaluate or compose runs in {experiment!r} of {source_uri}")
    seeds = sorted({int(r.data.tags.get("noharm.seed", 0)) for r in runs})
    shift = max(seeds) + 1
    target = MlflowClient(tracking_uri=target_uri)
    exp_id = target.create_experiment(experiment)
    made, copy = 0, 0
    now = int(time.time() * 1000)
    while made < n_runs:
        for r in runs:
            if made >= n_runs:
                break
            tags = {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")}
            tags["noharm.seed"] = str(int(tags.get("noharm.seed", 0)) + copy * shift)
            run = target.create_run(exp_id, run_name=r.info.run_name, tags=tags, start_time=now + made)
            params = [Param(k, v) for k, v in r.data.params.items()]
            metrics = [Metric(k, v, now, 0) for k, v in r.data.metrics.items()]
            for i in range(0, max(len(metrics), len(params), 1), 1000):
                target.log_batch(run.info.run_id, metrics=metrics[i:i + 1000], params=params[i:i + 100] if i == 0 else [],
                                 tags=[RunTag("noharm.copy", str(copy))] if i == 0 else [])
            for i in range(100, len(params), 100):
                target.log_batch(run.info.run_id, params=params[i:i + 100])
            target.set_terminated(run.info.run_id, "FINISHED")
            made += 1
        copy += 1
    return made


def profile_report(uri: str, experiment: str) -> tuple[float, dict[str, float]]:
    """(wall seconds, seconds per phase) of one `write_report`."""
    from noharm.analysis.report import write_report

    with tempfile.TemporaryDirectory(prefix="noharm-report-speed-") as out:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        write_report(experiment, uri, out)
        prof.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    phases = {}
    for (file, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        for (suffix, fn), label in PHASES.items():
            if name == fn and file.endswith(suffix):
                phases[label] = phases.get(label, 0.0) + cumulative
    return wall, phases


def command_wall(uri: str, experiment: str, repeats: int) -> list[float]:
    """Wall seconds of `python -m noharm.bench.cli report` in a fresh process each time (start-up included)."""
    walls = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="noharm-report-cmd-") as out:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "noharm.bench.cli", "report", "--experiment", experiment,
                            "--tracking-uri", uri, "--out", out], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
            walls.append(time.perf_counter() - t0)
    return walls


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def same_as_search_api(uri: str, experiment: str) -> str:
    """Whether the report read by SQL and the report read through MLflow's search API have the same bytes."""
    import noharm.analysis.collect as collect_mod
    from noharm.analysis.report import write_report

    with tempfile.TemporaryDirectory(prefix="noharm-report-check-") as tmp:
        write_report(experiment, uri, Path(tmp) / "sql")
        fast = collect_mod.sqlite_experiment_runs
        collect_mod.sqlite_experiment_runs = lambda db, name: None
        try:
            t0 = time.perf_counter()
            write_report(experiment, uri, Path(tmp) / "api")
            api_wall = time.perf_counter() - t0
        finally:
            collect_mod.sqlite_experiment_runs = fast
        a, b = _hashes(Path(tmp) / "sql"), _hashes(Path(tmp) / "api")
    same = "same bytes" if a == b else f"DIFFERENT: {sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))}"
    return f"{same} in {len(a)} files as through MLflow's search API (that report: {api_wall:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a sweep's mlflow.db (or a tracking URI)")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--runs", type=int, nargs="+", default=[0, 5000],
                        help="store sizes; 0 is the source itself (default: 0 5000)")
    parser.add_argument("--work", default=None, help="folder for the synthetic stores (default: temporary)")
    parser.add_argument("--repeats", type=int, default=3, help="whole-command runs per store (default: 3)")
    parser.add_argument("--check-api", action="store_true",
                        help="also compare the report's bytes with one read through MLflow's search API")
    parser.add_argument("--note", default="", help="a line on the machine's load, added to RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    source = args.source if "://" in args.source or args.source.startswith("sqlite:") \
        else f"sqlite:///{Path(args.source).absolute()}"
    work = Path(args.work or tempfile.mkdtemp(prefix="noharm-report-stores-"))
    lines = []
    for n in args.runs:
        if n == 0:
            uri, made, built = source, "the source's", 0.0
        else:
            db = work / f"store-{n}.db"
            uri = f"sqlite:///{db}"
            t0 = time.perf_counter()
            made = str(grow(source, args.experiment, uri, n) if not db.exists() else n)
            built = time.perf_counter() - t0
        walls = command_wall(uri, args.experiment, args.repeats)
        wall, phases = profile_report(uri, args.experiment)
        shares = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]))
        line = (f"- {made} runs (built in {built:.0f} s): `noharm report` {statistics.median(walls):.1f} s wall "
                f"(median of {', '.join(f'{w:.1f}' for w in walls)}; whole command); `write_report` {wall:.1f} s "
                f"under cProfile: {shares}")
        if args.check_api:
            line += f"; {same_as_search_api(uri, args.experiment)}"
        lines.append(line)
        print(lines[-1], flush=True)
    from noharm.bench.perf.common import append_results

    append_results("report_speed.py: `noharm report` on the source store and synthetic stores",
                   f"Grown from {args.source} (experiment {args.experiment!r}); cProfile adds overhead. "
                   f"{args.note}\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
