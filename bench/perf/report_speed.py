"""`noharm report` time on a store of any size: a synthetic store grown from a real one, profiled by phase.

Run by hand from the repository root:

    .venv/bin/python -m noharm.bench.perf.report_speed --source results/mlflow.db --experiment default --runs 5000

Copies the FINISHED evaluate and compose runs of the source experiment (tags, params, metrics) into a
new store as many times as needed to reach `--runs`, shifting `noharm.seed` by the number of source
seeds per copy so every copy is a new set of seeds (the tables get more seeds, not duplicate rows).
Then runs the report into a temporary folder under cProfile and prints the wall time and the share of
the main phases (collecting through MLflow's search API, tables, plots, leaderboard). Appends a line
to bench/perf/RESULTS.md. Stress runs are not copied (they need their artifacts).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

PHASES = {  # (file suffix, function name) -> phase of `analysis.report.write_report`
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a sweep's mlflow.db (or a tracking URI)")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--runs", type=int, nargs="+", default=[558, 5000])
    parser.add_argument("--work", default=None, help="folder for the synthetic stores (default: temporary)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    source = args.source if "://" in args.source or args.source.startswith("sqlite:") \
        else f"sqlite:///{Path(args.source).absolute()}"
    work = Path(args.work or tempfile.mkdtemp(prefix="noharm-report-stores-"))
    lines = []
    for n in args.runs:
        db = work / f"store-{n}.db"
        uri = f"sqlite:///{db}"
        t0 = time.perf_counter()
        if not db.exists():
            made = grow(source, args.experiment, uri, n)
        else:
            made = n
        built = time.perf_counter() - t0
        wall, phases = profile_report(uri, args.experiment)
        shares = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]))
        lines.append(f"- {made} runs (built in {built:.0f} s): `write_report` {wall:.1f} s under cProfile; {shares}")
        print(lines[-1], flush=True)
    from noharm.bench.perf.common import append_results

    append_results("report_speed.py: `noharm report` on synthetic stores",
                   f"Grown from {args.source} (experiment {args.experiment!r}); cProfile adds overhead.\n\n"
                   + "\n".join(lines))


if __name__ == "__main__":
    main()
