"""`noharm stress`: distribution-shift stress tests of the no-harm selector on finished runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noharm.bench.commands.common import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stress", help="stress the no-harm selector under shifts between validation and test",
        description="Run the scenarios of a stress suite over finished runs: either every evaluate run of an MLflow "
                    "experiment (results logged to the same experiment), or one run folder against its ERM folder.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", metavar="NAME", help="MLflow experiment whose finished evaluate runs to stress")
    src.add_argument("--run", metavar="DIR", help="a method's run folder (from `noharm trial --out`)")
    p.add_argument("--erm", metavar="DIR", help="with --run: the ERM run folder of the same dataset, attribute and seed")
    p.add_argument("--tracking-uri", help="with --experiment: MLflow tracking URI (default: MLflow's own default)")
    p.add_argument("--suite", help="stress suite YAML (default: the packaged bench/suites/stress.yaml)")
    p.add_argument("--repeats", type=int, help="repeats per scenario and severity (overrides the suite)")
    p.add_argument("--tolerance", type=float, help="accuracy drop below ERM that counts as harm (overrides the suite)")
    p.add_argument("--out", metavar="DIR", help="with --run: folder for stress.parquet and blind.parquet "
                                                 "(default: <run>/stress)")
    p.add_argument("--quiet", action="store_true", help="no progress log")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noharm.bench.stress.run import load_stress_suite, run_stress_for_experiment, stress_run_folders, write_outcome

    if args.repeats is not None and args.repeats < 1:
        raise UsageError(f"--repeats must be a positive integer, got {args.repeats}")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.experiment:
        if args.erm or args.out:
            raise UsageError("--erm and --out go with --run; with --experiment the ERM runs are found by their tags")
        table = run_stress_for_experiment(args.experiment, tracking_uri=args.tracking_uri, suite_path=args.suite,
                                          repeats=args.repeats, tolerance=args.tolerance, log=log)
        print(f"stressed {table[['dataset', 'attribute', 'method', 'seed']].drop_duplicates().shape[0]} run(s), "
              f"{len(table)} rows logged to experiment {args.experiment!r}")
        if len(table):
            print(harm_table(table))
        return 0
    if not args.erm:
        raise UsageError("--run needs --erm DIR: the ERM run folder of the same dataset, attribute and seed")
    if args.tracking_uri:
        raise UsageError("--tracking-uri goes with --experiment")
    suite = load_stress_suite(args.suite, repeats=args.repeats, tolerance=args.tolerance)
    outcome = stress_run_folders(args.run, args.erm, suite, log=log)
    t = outcome.tags
    print(f"stress of {t['method']} vs erm on {t['dataset']} ({t['attribute']}), seed {t['seed']}: "
          f"{suite.settings.repeats} repeats, tolerance {suite.settings.tolerance:g}")
    for why in outcome.skipped:
        print(f"skipped: {why}")
    if len(outcome.table):
        print(harm_table(outcome.table))
    if outcome.routing_accuracy:
        print("blind routing accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in outcome.routing_accuracy.items()))
    paths = write_outcome(outcome, args.out or Path(args.run) / "stress")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def harm_table(table) -> str:
    """Harm rate per scenario and severity (rows) and strategy (columns), as plain text."""
    import pandas as pd

    keys = ["dataset", "attribute", "scenario", "severity"]
    wide = table.pivot_table(index=keys, columns="strategy", values="harm_rate")
    # Rows and columns in the order the runner produced them (severity order as in the suite).
    wide = wide.reindex(pd.MultiIndex.from_frame(table[keys].drop_duplicates()))[list(table["strategy"].unique())]
    return "harm rate (share of repeats in which some group falls below ERM on test)\n" + \
        wide.to_string(float_format=lambda v: f"{v:.3f}")
