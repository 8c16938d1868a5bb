"""`write_report`: everything a paper or a leaderboard needs, regenerated from what MLflow holds.

Layout of the output folder:

    README.md              index: experiment, runs per stage and status, notes, links to everything
    tidy.parquet           one row per number (analysis.collect.TIDY_COLUMNS)
    stress.parquet         the stress runs' rows (only when there are stress runs)
    summary.csv            one row per (task, entry, seed): headline metrics at full precision
    tables/<name>.{md,tex,csv}   comparison, ablation, selection, settings, stress, shift (natural shift), cost
    plots/*.{png,svg}      cd-diagram (ranks), groups-<task> (differences to ERM), pareto-<task>, stress-<scenario>,
                           shift-<task>-<domain> (in- against out-of-domain difference to ERM)
    leaderboard.{html,md,csv}

The same store gives the same bytes: nothing time- or machine-dependent is written
unless `stamp=True` (then README.md records when and where the report was made), and no absolute path of this
machine: a local store's path is written relative to the folder the report was made in (`portable_uri`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noharm.analysis import leaderboard, plots, settings_table, shift, tables
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


def portable_uri(uri: str, base: str | os.PathLike | None = None) -> str:
    """The tracking URI as a report shows it: a `sqlite:` store with an absolute path becomes relative to `base`
    (default: the current folder, where `noharm report` ran: the project folder when run as documented), so no
    report carries a path of the machine that made it; other URIs are shown as given."""
    from noharm.analysis.collect import sqlite_path

    db = sqlite_path(uri)
    if db is None or not db.is_absolute():
        return uri
    return "sqlite:///" + Path(os.path.relpath(db, Path(base or Path.cwd()).absolute())).as_posix()


def portable_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """`path` relative to `base` (default: the current folder)."""
    return Path(os.path.relpath(Path(path).absolute(), Path(base or Path.cwd()).absolute())).as_posix()


def _index(report: Report, col: Collection, docs: list[TableDoc], plot_paths: list[Path], stamp: str | None,
           protocol: Protocol, summary: pd.DataFrame, command: str) -> str:
    out = report.out
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    commits = sorted(c for c in col.runs["git_commit"].unique() if c)
    store = portable_uri(col.tracking_uri)
    lines = [f"# noharm report: {col.experiment}", ""]
    if stamp:
        lines += [f"Generated {stamp}.", ""]
    lines += [f"Experiment `{col.experiment}` (id {col.experiment_id}) in `{store}` (paths relative to the folder the "
              f"report was made in). Regenerate from that folder with `{command}`; browse the runs with "
              f"`mlflow ui --backend-store-uri {store}`.", "",
              "Tables use the FINISHED `evaluate` and `compose` runs only (never `search`). "
              + protocol.protocol_text() + " " + protocol.harm_text(tables.family_size(summary)), "",
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
    lines += ["", "## Leaderboard", "", "[HTML](leaderboard.html) · [Markdown](leaderboard.md) · "
              "[CSV](leaderboard.csv)", ""]
    board = report.board
    if board is not None and len(board.ranking):
        lines += [f"| # | entry | mean rank | p vs #1 | harmed ({board.correction}) | raw | pairs |",
                  "|---:|:---|---:|---:|---:|---:|---:|"]
        for r in board.ranking.head(10).itertuples(index=False):
            lines.append(f"| {r.position} | {r.entry} | {r.mean_rank:.2f} | {tables.fmt(r.p_vs_top)} | {r.harmed} | "
                         f"{r.harmed_raw} | {r.tasks} |")
        lines += ["", board.rule, "", board.statistics, ""]
        cd = out / f"{leaderboard.CD_PLOT}.png"
        if cd in plot_paths:
            lines += [f"![critical-difference diagram]({rel(cd)})", f"([SVG]({rel(cd.with_suffix('.svg'))}))", ""]
    lines += ["## Plots", ""]
    for path in plot_paths:
        if path.suffix == ".png" and not path.stem.startswith("cd-"):
            lines += [f"![{path.stem}]({rel(path)})", f"([SVG]({rel(path.with_suffix('.svg'))}))", ""]
    lines += ["## Data", "", "- [summary.csv](summary.csv): one row per dataset, grouping, entry and seed: the "
              "headline test metrics at full precision and the groups below ERM on that seed (compare a rerun with "
              "it)", "- [tidy.parquet](tidy.parquet): one row per number (run, stage, dataset, target, "
              "attribute, method, strategy, candidate, entry, primary, seed, split, group, metric, value)"]
    if not col.stress.empty:
        lines.append("- [stress.parquet](stress.parquet): the rows of every stress run")
    return "\n".join(lines).rstrip("\n") + "\n"


def _rank_summary(col: Collection, protocol: Protocol, summary: pd.DataFrame, split: str) -> pd.DataFrame:
    """The summary the leaderboard ranks on: the report's own for test, else `split`'s (AnalysisError if absent)."""
    if split == "test":
        return summary
    t = col.tidy
    have = sorted(set(t.loc[(t["metric"] == leaderboard.RANK_METRIC) & (t["group"] == leaderboard.RANK_GROUP),
                            "split"]))
    if split not in have:
        raise AnalysisError(f"--rank-split {split!r}: no worst-group AUC on that split in experiment "
                            f"{col.experiment!r}; splits there: {', '.join(have) or 'none'}")
    return tables.summarise(t, protocol, split=split)


def report_command(experiment: str, store: str, out: Path, protocol: Protocol, rank_split: str,
                   rank_entries: str) -> str:
    """The `noharm report` command line that regenerates this report (options at their defaults left out)."""
    parts = ["noharm report", f"--experiment {experiment}", f"--tracking-uri {store}", f"--out {portable_path(out)}"]
    default = Protocol()
    for flag, value, dflt in (("--level", protocol.level, default.level), ("--alpha", protocol.alpha, default.alpha),
                              ("--test", protocol.test, default.test),
                              ("--correction", protocol.correction, default.correction),
                              ("--rank-split", rank_split, "test"), ("--rank-entries", rank_entries, "all")):
        if value != dflt:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def write_report(experiment: str, tracking_uri: str | None, out_dir: str | os.PathLike,
                 protocol: Protocol = Protocol(), stamp: bool = False, rank_split: str = "test",
                 rank_entries: str = "all") -> Report:
    """Collect the experiment from MLflow and write every table, plot and the leaderboard into `out_dir`.

    `rank_split`: the split the leaderboard ranks on (`test`, `val`, or an out-of-domain `shift:<name>`);
    `rank_entries`: `all`, `methods` or a selector name (leaderboard.ENTRY_SETS). Raises AnalysisError (one line)
    for a missing store or experiment, an output path that is a file, a bad option, or an experiment without a
    single FINISHED evaluate run; nothing is written then.
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
        raise AnalysisError(f"experiment {experiment!r} in {portable_uri(col.tracking_uri)!r} has no FINISHED "
                            f"evaluate runs ({len(col.runs)} run(s), {n_failed} FAILED); run or resume the sweep first")
    summary = tables.summarise(col.tidy, protocol)
    try:
        leaderboard.check_entries(rank_entries, summary)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from None
    rank_summary = _rank_summary(col, protocol, summary, rank_split)
    report = Report(out=out, notes=list(col.notes), collection=col)
    if not any(m == tables.ERM for m in evaluated["method"].unique()):
        report.notes.append("no ERM runs: no harm marks, and the selection table has no reference")
    shift_summary = shift.shift_summary(col.tidy, protocol)  # natural shift: the shift:<name> splits
    docs = [tables.comparison(col, protocol, summary), tables.ablation(col, protocol, summary),
            tables.selection(col, protocol, summary), settings_table.settings(col), tables.stress(col),
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
    report.board = leaderboard.build(rank_summary, protocol, rank_split, rank_entries)
    test = report.board.test
    cd = [] if test is None else plots.cd_diagram(
        test, out / leaderboard.CD_PLOT, f"{experiment}: mean rank of worst-group AUC on {rank_split!r} over "
        f"{test.n_blocks} dataset/grouping pairs;\nCD = {test.cd:.2f} (Nemenyi, level {protocol.alpha:g}); bars join "
        f"entries not significantly different")
    plot_paths = cd + plot_paths
    report.paths += plot_paths
    store = portable_uri(col.tracking_uri)
    report.paths += leaderboard.write(report.board, col, out, store, cd_plot=bool(cd))
    report.paths.append(_write_text(out / "summary.csv", tables.per_seed(col.tidy).to_csv(index=False,
                                                                                            lineterminator="\n")))
    report.paths.append(_write_parquet(out / "tidy.parquet", col.tidy))
    if not col.stress.empty:
        report.paths.append(_write_parquet(out / "stress.parquet", col.stress))
    command = report_command(experiment, store, out, protocol, rank_split, rank_entries)
    index = _index(report, col, docs, plot_paths, machine_stamp() if stamp else None, protocol, summary, command)
    report.paths.append(_write_text(out / "README.md", index))
    return report


__all__ = ["Report", "write_report", "machine_stamp", "portable_uri"]
