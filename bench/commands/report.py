"""`noharm report`: tables, plots and a leaderboard regenerated from an experiment in MLflow."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_OUT = "results/report"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="regenerate tables, plots and the leaderboard of an experiment from MLflow",
        description="Read the FINISHED evaluate, compose and stress runs of an MLflow experiment and write the "
                    "comparison, ablation, selection, stress and cost tables (Markdown, LaTeX, CSV), the plots "
                    "(PNG, SVG), the leaderboard (HTML, Markdown) and the tidy table (Parquet) into --out. "
                    "The same store gives byte-identical files.")
    p.add_argument("--experiment", required=True, metavar="NAME", help="MLflow experiment (a sweep's suite name)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else results/mlflow.db when it exists, "
                        "else MLflow's own default)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="level of the one-sided paired test that marks a group harmed (default: 0.05)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)")
    p.add_argument("--test", choices=("t", "sign-flip"), default="t",
                   help="paired test over seeds: t-test or exact sign-flip permutation test (default: t)")
    p.add_argument("--stamp", action="store_true",
                   help="record the date and this machine in README.md (off by default: reruns stay byte-identical)")
    p.set_defaults(func=run)


def default_tracking_uri() -> str | None:
    """$MLFLOW_TRACKING_URI, else the store `noharm bench` writes (results/mlflow.db) when present, else None."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    local = Path("results") / "mlflow.db"
    return f"sqlite:///{local.absolute()}" if local.is_file() else None


def run(args: argparse.Namespace) -> int:
    from noharm.analysis.collect import AnalysisError
    from noharm.analysis.report import write_report
    from noharm.analysis.tables import Protocol
    from noharm.bench.errors import ConfigError
    from noharm.bench.tracking import check_database_driver

    uri = args.tracking_uri or default_tracking_uri()
    if uri:
        check_database_driver(uri)  # a missing database driver: one line naming the extra, not a traceback
    try:
        report = write_report(args.experiment, uri, args.out,
                              Protocol(level=args.level, alpha=args.alpha, test=args.test), stamp=args.stamp)
    except AnalysisError as exc:
        raise ConfigError(str(exc)) from None
    col = report.collection
    finished = col.runs[col.runs["status"] == "FINISHED"]["stage"].value_counts()
    print(f"report of experiment {col.experiment!r} ({col.tracking_uri}): "
          + ", ".join(f"{int(finished.get(s, 0))} {s}" for s in ("evaluate", "compose", "stress")) + " run(s)")
    for note in report.notes:
        print(f"note: {note}")
    if report.board is not None and len(report.board.ranking):
        print("leaderboard (mean rank of worst-group test AUC; harmed groups):")
        for r in report.board.ranking.head(5).itertuples(index=False):
            print(f"  {r.position:>2}. {r.entry:<32} {r.mean_rank:6.2f}  {r.harmed}")
    print(f"wrote {len(report.paths)} files; start at {report.out / 'README.md'}")
    return 0
