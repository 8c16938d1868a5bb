"""`write_report`: everything a paper or a leaderboard needs, regenerated from what MLflow holds.

Layout of the output folder:

    README.md              index: experiment, runs per stage and status, notes, links to everything
    tidy.parquet           one row per number (analysis.collect.TIDY_COLUMNS)
    stress.parquet         the stress runs' rows (only when there are stress runs)
    tables/<name>.{md,tex,csv}   comparison, ablation, selection, stress, shift (natural shift), cost
    plots/*.{png,svg}      groups-<task> (differences to ERM), pareto-<task>, stress-<scenario>,
                           shift-<task>-<domain> (in- against out-of-domain difference to ERM)
    leaderboard.{html,md}

The same store gives the same bytes: nothing time- or machine-dependent is written
unless `stamp=True` (then README.md records when and where the report was made).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noharm.analysis import leaderboard, plots, shift, tables
from noharm.analysis.collect import AnalysisError, Collection, collect, iter_tasks, stage_counts
from noharm.analysis.tables import Protocol, TableDoc


@dataclass
class Report:
    """What `write_report` wrote, and what it noted (skipped tables, failed runs)."""

    out: Path
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    collection: Collection | None = None
    board: leaderboard.Board | None = None


def machine_stamp() -> str:
    """`<UTC date and time>; <CPU model>; <n> cores; <OS>; Python <version>` of this machine."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{now}; {model}; {os.cpu_count()} cores; {platform.platform()}; Python {platform.python_version()}"


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False, engine="pyarrow", compression="zstd")
    return path


def _counts_markdown(runs: pd.DataFrame) -> list[str]:
    counts = stage_counts(runs)
    if counts.empty:
        return ["(no runs)"]
    head = ["stage", *counts.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    for stage, row in counts.iterrows():
        lines.append("| " + " | ".join([str(stage), *[str(int(v)) for v in row]]) + " |")
    return lines


def _index(report: Report, col: Collection, docs: list[TableDoc], plot_paths: list[Path], stamp: str | None,
           protocol: Protocol) -> str:
    out = report.out
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    commits = sorted(c for c in col.runs["git_commit"].unique() if c)
    lines = [f"# noharm report: {col.experiment}", ""]
    if stamp:
        lines += [f"Generated {stamp}.", ""]
    lines += [f"Experiment `{col.experiment}` (id {col.experiment_id}) in `{col.tracking_uri}`. "
              f"Regenerate with `noharm report --experiment {col.experiment} --tracking-uri {col.tracking_uri} "
              f"--out <folder>`.", "",
              "Tables use the FINISHED `evaluate` and `compose` runs only (never `search`). "
              + protocol.protocol_text() + " " + protocol.harm_text(), "",
              "## Runs", "", *_counts_markdown(col.runs), ""]
    if commits:
        lines += ["Source commits of the runs: " + ", ".join(f"`{c}`" for c in commits) + ".", ""]
    if report.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    lines += ["## Tables", ""]
    for doc in docs:
        if doc.empty:
            lines.append(f"- {doc.title}: not written ({'; '.join(doc.notes) or 'nothing to show'})")
        else:
            lines.append(f"- {doc.title}: [Markdown](tables/{doc.name}.md), [LaTeX](tables/{doc.name}.tex), "
                         f"[CSV](tables/{doc.name}.csv)")
    lines += ["", "## Leaderboard", "", "[HTML](leaderboard.html) · [Markdown](leaderboard.md)", ""]
    if report.board is not None and len(report.board.ranking):
        lines += ["| # | method | mean rank | harmed groups | pairs |", "|---:|:---|---:|---:|---:|"]
        for r in report.board.ranking.head(10).itertuples(index=False):
            lines.append(f"| {r.position} | {r.entry} | {r.mean_rank:.2f} | {r.harmed} | {r.tasks} |")
        lines += ["", report.board.rule, ""]
    lines += ["## Plots", ""]
    for path in plot_paths:
        if path.suffix == ".png":
            lines += [f"![{path.stem}]({rel(path)})", f"([SVG]({rel(path.with_suffix('.svg'))}))", ""]
    lines += ["## Data", "", "- [tidy.parquet](tidy.parquet): one row per number (run, stage, dataset, target, "
              "attribute, method, strategy, candidate, entry, primary, seed, split, group, metric, value)"]
    if not col.stress.empty:
        lines.append("- [stress.parquet](stress.parquet): the rows of every stress run")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(experiment: str, tracking_uri: str | None, out_dir: str | os.PathLike,
                 protocol: Protocol = Protocol(), stamp: bool = False) -> Report:
    """Collect the experiment from MLflow and write every table, plot and the leaderboard into `out_dir`.

    Raises AnalysisError (one line) for a missing store or experiment, an output path that is a
    file, or an experiment without a single FINISHED evaluate run.
    """
    try:
        protocol.validate()
    except ValueError as exc:
        raise AnalysisError(str(exc)) from None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} is a file; give a folder for the report")
    col = collect(experiment, tracking_uri)
    evaluated = col.tidy[col.tidy["stage"] == "evaluate"]
    if evaluated.empty:
        n_failed = int((col.runs["status"] == "FAILED").sum())
        raise AnalysisError(f"experiment {experiment!r} in {col.tracking_uri!r} has no FINISHED evaluate runs "
                            f"({len(col.runs)} run(s), {n_failed} FAILED); run or resume the sweep first")
    report = Report(out=out, notes=list(col.notes), collection=col)
    if not any(m == tables.ERM for m in evaluated["method"].unique()):
        report.notes.append("no ERM runs: no harm marks, and the selection table has no reference")
    summary = tables.summarise(col.tidy, protocol)
    shift_summary = shift.shift_summary(col.tidy, protocol)  # natural shift: the shift:<name> splits
    docs = [tables.comparison(col, protocol, summary), tables.ablation(col, protocol, summary),
            tables.selection(col, protocol, summary), tables.stress(col),
            shift.natural_shift(col.tidy, protocol, shift_summary), tables.cost(col)]
    for doc in docs:
        report.notes += doc.notes
        if not doc.empty:
            report.paths += tables.write_table(doc, out / "tables")
    groups = tables.group_order(col)
    plot_paths: list[Path] = []
    intervals = plots.difference_intervals(col.tidy, protocol)  # every task's, once
    for task in iter_tasks(col.tidy[col.tidy["split"] == "test"]):
        plot_paths += plots.group_bars(col.tidy, task, groups.get(task, []), out / "plots", protocol, intervals)
        plot_paths += plots.pareto(summary, task, out / "plots")
    if not col.stress.empty:
        plot_paths += plots.stress_curves(tables.stress_summary(col.stress), out / "plots")
    for key in shift_summary[[*tables.TASK, "shift"]].drop_duplicates().itertuples(index=False, name=None):
        plot_paths += shift.shift_plot(shift_summary, key[:3], key[3], out / "plots", protocol)
    report.paths += plot_paths
    report.board = leaderboard.build(summary, protocol)
    report.paths += leaderboard.write(report.board, col, out)
    report.paths.append(_write_parquet(out / "tidy.parquet", col.tidy))
    if not col.stress.empty:
        report.paths.append(_write_parquet(out / "stress.parquet", col.stress))
    index = _index(report, col, docs, plot_paths, machine_stamp() if stamp else None, protocol)
    report.paths.append(_write_text(out / "README.md", index))
    return report


__all__ = ["Report", "write_report", "machine_stamp"]
