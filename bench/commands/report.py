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
    p.add_argument("--correction", choices=("holm", "bh"), default="holm",
                   help="multiple-testing correction over all harm tests of the report (and, apart, all fairness "
                        "comparisons): holm (family-wise error, default) or bh (Benjamini-Hochberg false discovery "
                        "rate); the tables show the corrected verdict beside the raw one, the leaderboard counts the "
                        "corrected one")
    p.add_argument("--rank-split", default="test", metavar="SPLIT",
                   help="split the leaderboard ranks on and counts harm on: test (default), val, or an "
                        "out-of-domain split shift:<name>")
    p.add_argument("--rank-entries", default="all", metavar="WHICH",
                   help="entries the leaderboard ranks: all (default: methods and every method + selector), methods "
                        "(each method's own model), or a selector name (each method plus its composition with it)")
    p.add_argument("--stamp", action="store_true",
                   help="record the date and this machine in README.md (off by default: reruns stay byte-identical)")
    p.set_defaults(func=run)


def default_tracking_uri() -> str | None:
    """$MLFLOW_TRACKING_URI, else the store `noharm bench` writes (results/mlflow.db) when present, else None."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    local = Path("results") / "mlflow.db"
    # Relative, as a user would type it: MLflow resolves it against the current folder, and reports stay portable.
    return f"sqlite:///{local.as_posix()}" if local.is_file() else None


def run(args: argparse.Namespace) -> int:
    from noharm.analysis.collect import AnalysisError
    from noharm.analysis.report import portable_uri, write_report
    from noharm.analysis.tables import Protocol
    from noharm.bench.errors import ConfigError

    try:
        report = write_report(args.experiment, args.tracking_uri or default_tracking_uri(), args.out,
                              Protocol(level=args.level, alpha=args.alpha, test=args.test, correction=args.correction),
                              stamp=args.stamp, rank_split=args.rank_split, rank_entries=args.rank_entries)
    except AnalysisError as exc:
        raise ConfigError(str(exc)) from None
    col = report.collection
    finished = col.runs[col.runs["status"] == "FINISHED"]["stage"].value_counts()
    print(f"report of experiment {col.experiment!r} ({portable_uri(col.tracking_uri)}): "
          + ", ".join(f"{int(finished.get(s, 0))} {s}" for s in ("evaluate", "compose", "stress")) + " run(s)")
    for note in report.notes:
        print(f"note: {note}")
    if report.board is not None and len(report.board.ranking):
        board = report.board
        print(f"leaderboard (mean rank of worst-group AUC on {board.split!r}; groups harmed after the "
              f"{board.correction} correction):")
        for r in board.ranking.head(5).itertuples(index=False):
            print(f"  {r.position:>2}. {r.entry:<32} {r.mean_rank:6.2f}  {r.harmed}")
        if board.test is not None and board.test.p_value == board.test.p_value:
            print(f"  Friedman p = {board.test.p_value:.3g} over {board.test.n_blocks} pairs and {board.test.k} "
                  f"entries; Nemenyi CD = {board.test.cd:.2f}")
    print(f"wrote {len(report.paths)} files; start at {report.out / 'README.md'}")
    return 0
