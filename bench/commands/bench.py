"""`noharm bench`: the main job (`make bench`): the default suite into results/."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="the main job (`make bench`): run the default suite into results/",
                       description="Run bench/suites/default.yaml (embedded datasets, every registered method, "
                                   "3 seeds) through Ray Tune into a local MLflow store under --out, print the "
                                   "comparison and the `mlflow ui` command. Rerunning resumes.")
    b.add_argument("--out", default="results", help="output folder (default: results)")
    b.add_argument("--suite", help="another suite file instead of the default one")
    b.add_argument("--max-concurrent", type=int, help="at most N trials at once (default: the suite's)")
    b.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under --out)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noharm.bench.commands.common import UsageError
    from noharm.bench.main_job import run_main_job

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    return run_main_job(out=args.out, suite=args.suite, max_concurrent=args.max_concurrent,
                        tracking_uri=args.tracking_uri)
