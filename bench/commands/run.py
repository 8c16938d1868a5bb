"""`noharm run SUITE.yaml`: a whole suite through Ray Tune into MLflow (resumable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noharm.bench.commands.common import DATA_ROOT_HELP

EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run a suite (datasets x attributes x methods x seeds) on Ray Tune, tracked in MLflow",
        description="Search (Optuna on the search seed), evaluate the best settings on every seed, compose the "
                    "selectors with ERM, and print the comparison. Rerunning the same command skips every trial "
                    "MLflow already holds as FINISHED, so a killed sweep resumes. Exit 0 when every trial finished, "
                    "1 when some failed (summary printed), 2 on bad input.",
    )
    p.add_argument("suite", metavar="SUITE.yaml", help="suite file (see bench/suites/ and the README)")
    p.add_argument("--out", help="output folder: local MLflow store, artifacts, Ray files (default runs/<suite name>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://host:5000 (default sqlite in --out)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the suite's name)")
    p.add_argument("--address", help="join a Ray cluster: 'auto' or ray://host:10001 (default: local Ray)")
    p.add_argument("--data-root", help=DATA_ROOT_HELP)
    p.add_argument("--max-concurrent", type=int, help="at most N trials at once (default: the suite's, else "
                                                      "as many as the CPUs allow)")
    p.add_argument("--device", default="auto", help="auto (CUDA when the trial has a GPU), cpu, cuda")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noharm.bench.commands.common import UsageError, check_device
    from noharm.bench.sweep.suite import load_suite

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    check_device(args.device)
    suite = load_suite(args.suite, data_root=args.data_root)
    out = args.out or str(Path("runs") / suite.name)
    return run_and_report(suite, out, tracking_uri=args.tracking_uri, experiment=args.experiment,
                          address=args.address, max_concurrent=args.max_concurrent, device=args.device,
                          quiet=args.quiet)


def run_and_report(suite, out: str, **kwargs) -> int:
    """Run a suite, print the comparison, the failures and how to open the results; return the exit code."""
    from noharm.bench.sweep.run import run_suite
    from noharm.bench.sweep.report import format_comparison

    outcome = run_suite(suite, out, **kwargs)
    print(format_comparison(outcome.table))
    print(f"\nsweep {suite.name} took {outcome.elapsed:.0f} s; results in {outcome.out}"
          + (f" (summary.csv)" if (outcome.out / "summary.csv").exists() else ""))
    print(f"open them with: {outcome.ui_command}")
    if outcome.interrupted:
        pending = sum(c.pending + c.running for c in outcome.counts.values())
        print(f"\ninterrupted with {pending} trial(s) not done; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome.failures:
        print(f"\n{len(outcome.failures)} trial(s) failed or could not run:", file=sys.stderr)
        for f in outcome.failures:
            print(f"  {f.stage} {f.what}: {f.error}", file=sys.stderr)
        print("rerun the same command to retry them (finished trials are skipped)", file=sys.stderr)
        return EXIT_FAILED_TRIALS
    return 0
