"""`noharm bench`: the main job (`make bench`): the default suite into results/, a stress pass, the report."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from noharm.bench.commands.common import UsageError

STRESS_METHODS = ("fairsde",)
STRESS_REPEATS = 100


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="the main job (`make bench`): run the default suite into results/",
                       description="Run bench/suites/default.yaml (embedded datasets, every registered method, "
                                   "3 seeds) through Ray Tune into a local MLflow store under --out, print the "
                                   "comparison and the `mlflow ui` command. Rerunning resumes.")
    b.add_argument("--out", default="results", help="output folder (default: results)")
    b.add_argument("--suite", help="another suite file instead of the default one")
    b.add_argument("--max-concurrent", type=int, help="at most N trials at once (default: the suite's, else as many "
                                                      "as the CPUs and GPUs allow)")
    b.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under --out)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    return run_main_job(out=args.out, suite=args.suite, max_concurrent=args.max_concurrent,
                        tracking_uri=args.tracking_uri)


def default_suite_path() -> Path:
    """The shipped default suite (package data, so it is found from any working folder)."""
    return Path(str(resources.files("noharm.bench") / "suites" / "default.yaml"))


def run_main_job(out: str = "results", suite: str | None = None, max_concurrent: int | None = None,
                 tracking_uri: str | None = None) -> int:
    """Run the default suite (or `suite`) into `out`; prints the comparison, where the results are and
    the `mlflow ui` command. Rerunning skips everything already finished."""
    # Imported here: they pull Ray and torch, which the other subcommands' start-up should not pay for.
    from noharm.analysis.report import write_report
    from noharm.bench.commands.run import run_and_report
    from noharm.bench.stress.run import run_stress_for_experiment
    from noharm.bench.sweep.suite import load_suite
    from noharm.bench.tracking import default_uri

    loaded = load_suite(suite or default_suite_path())
    code = run_and_report(loaded, out, tracking_uri=tracking_uri, max_concurrent=max_concurrent)
    if code not in (0, 1):  # interrupted or bad input: nothing more to add
        return code
    # The same store and experiment the sweep used (bench.sweep.run.run_suite's rule).
    uri = tracking_uri or loaded.tracking.uri or default_uri(Path(out).absolute())
    experiment = loaded.tracking.experiment or loaded.name
    # A small stress pass: FairSDE's selection under shift, 100 repeats per severity.
    print("\nstress pass (FairSDE against ERM, 100 repeats per severity) ...")
    run_stress_for_experiment(experiment, uri, None, repeats=STRESS_REPEATS, methods=STRESS_METHODS, log=lambda m: None)
    report = write_report(experiment, uri, Path(out) / "report")
    print(f"report: tables, plots and leaderboard in {report.out} (start at {report.out / 'README.md'}, "
          f"leaderboard {report.out / 'leaderboard.html'})")
    return code
