"""The leaderboard: methods ranked by a stated rule, as a static HTML page and as Markdown.

Rule: for each (dataset, grouping), rank the methods (and selector compositions) by
mean worst-group test AUC over seeds, 1 = best, ties sharing the average rank; order by
the mean of those ranks over the pairs where the method ran; ties broken by fewer
harmed groups, then by name. Beside it: how many (pair, group) cells are harmed with
confidence (accuracy or AUC below ERM's, paired test over seeds). Each cell links to
its MLflow runs (one link per seed).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy.stats import rankdata

from noharm.analysis.collect import Collection, is_local, run_url
from noharm.analysis.tables import AGGREGATES, TASK, Protocol, fmt, task_title

RANK_METRIC, RANK_GROUP = "auc", "worst"


@dataclass
class Board:
    """The ranking (one row per entry) and, per (entry, task), the cell's mean, half-width and runs."""

    ranking: pd.DataFrame  # entry, mean_rank, tasks, harmed, cells
    cells: pd.DataFrame  # entry, dataset, target, attribute, mean, half_width, rank, seeds, runs
    tasks: list[tuple[str, str, str]]
    rule: str


def rule_text(protocol: Protocol) -> str:
    """The ranking rule, stated on the page."""
    return ("Ranking rule: for each dataset and grouping, methods are ranked by their worst-group test AUC (mean "
            "over seeds; rank 1 = highest; ties share the average rank); the leaderboard orders them by the mean of "
            "these ranks over the dataset/grouping pairs they ran on, ties broken by fewer harmed groups, then by "
            "name. Harmed groups: (pair, group) cells where the group's test accuracy or AUC is below pooled ERM's "
            f"with confidence ({protocol.test_name} over seeds, level {protocol.alpha:g}). Selection, early "
            "stopping and hyperparameters used validation only, never test.")


def build(summary: pd.DataFrame, protocol: Protocol = Protocol()) -> Board:
    """The ranking of every primary entry (method or method + selector) from `tables.summarise` output."""
    s = summary[summary["primary"]]
    cells = s[(s["metric"] == RANK_METRIC) & (s["group"] == RANK_GROUP)].copy()
    cells = cells[[*TASK, "entry", "mean", "half_width", "seeds", "runs"]].dropna(subset=["mean"])
    cells["rank"] = 0.0
    for _, idx in cells.groupby(TASK).groups.items():
        cells.loc[idx, "rank"] = rankdata(-cells.loc[idx, "mean"].to_numpy(), method="average")
    g = s[~s["group"].isin(AGGREGATES)]
    harmed = g.groupby([*TASK, "entry", "group"])["harmed"].any().groupby("entry").sum()
    rank = cells.groupby("entry").agg(mean_rank=("rank", "mean"), tasks=("rank", "size")).reset_index()
    rank["harmed"] = [int(harmed.get(e, 0)) for e in rank["entry"]]
    rank = rank.sort_values(["mean_rank", "harmed", "entry"], kind="mergesort").reset_index(drop=True)
    rank.insert(0, "position", range(1, len(rank) + 1))
    tasks = sorted({tuple(t) for t in cells[TASK].itertuples(index=False, name=None)})
    return Board(rank, cells.sort_values([*TASK, "entry"]).reset_index(drop=True), tasks, rule_text(protocol))


def _links_note(col: Collection) -> str:
    if is_local(col.tracking_uri):
        return (f"Each value links to the run of its first seed and each seed number to that seed's run, in the MLflow "
                f"UI of this local store: start it with `mlflow ui --backend-store-uri {col.tracking_uri}` "
                f"(it serves http://127.0.0.1:5000, the address the links use).")
    return f"Each value links to the run of its first seed and each seed number to that seed's run on {col.tracking_uri}."


def _cell_links(col: Collection, row) -> list[tuple[str, str]]:
    seeds = str(row["seeds"]).split(",")
    runs = str(row["runs"]).split(",")
    return [(s, run_url(col.tracking_uri, col.experiment_id, r)) for s, r in zip(seeds, runs)]


def to_markdown(board: Board, col: Collection) -> str:
    """The leaderboard as Markdown, with the rule and the link note above the table."""
    cells = board.cells.set_index(["entry", *TASK])
    head = ["#", "method", "mean rank", "harmed groups", "pairs"] + [task_title(*t) for t in board.tasks]
    lines = [f"# Leaderboard: {col.experiment}", "", board.rule, "", _links_note(col), "",
             "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
             "|" + "|".join([":---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in board.ranking.itertuples(index=False):
        row = [str(r.position), r.entry, f"{r.mean_rank:.2f}", str(r.harmed), str(r.tasks)]
        for t in board.tasks:
            key = (r.entry, *t)
            if key not in cells.index:
                row.append("–")
                continue
            c = cells.loc[key]
            links = _cell_links(col, c)
            value = fmt(c["mean"]) + ("" if math.isnan(c["half_width"]) else f" ± {fmt(c['half_width'])}")
            seeds = " ".join(f"[{s}]({u})" for s, u in links)
            row.append(f"[{value}]({links[0][1]}) (seeds {seeds}; rank {c['rank']:g})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222;max-width:90em}
table{border-collapse:collapse;font-size:14px}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td.name,th.name{text-align:left}tr.top td{font-weight:600}
.seeds{font-size:11px;color:#666}.harm{color:#c0392b;font-weight:600}p.rule{max-width:60em}a{color:#1f5f99}"""


def _code(escaped: str) -> str:
    """`x` spans of already-escaped text as <code>x</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def to_html(board: Board, col: Collection) -> str:
    """A static, self-contained HTML page (no scripts, no external resources) with the ranked table."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>noharm leaderboard: {e(col.experiment)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>Leaderboard: {e(col.experiment)}</h1>", f'<p class="rule" id="rule">{e(board.rule)}</p>',
           f'<p class="rule" id="links">{_code(e(_links_note(col)))}</p>',
           '<table id="leaderboard">', "<thead><tr>", '<th>#</th><th class="name">method</th><th>mean rank</th>'
           "<th>harmed groups</th><th>pairs</th>"]
    out += [f"<th>{e(task_title(*t))}<br><small>worst-group AUC</small></th>" for t in board.tasks]
    out += ["</tr></thead>", "<tbody>"]
    cells = board.cells.set_index(["entry", *TASK])
    for r in board.ranking.itertuples(index=False):
        cls = ' class="top"' if r.position == 1 else ""
        harm = f'<span class="harm">{r.harmed}</span>' if r.harmed else "0"
        row = [f'<tr{cls} data-method="{e(r.entry)}">', f"<td>{r.position}</td>", f'<td class="name">{e(r.entry)}</td>',
               f"<td>{r.mean_rank:.2f}</td>", f"<td>{harm}</td>", f"<td>{r.tasks}</td>"]
        for t in board.tasks:
            key = (r.entry, *t)
            if key not in cells.index:
                row.append("<td>–</td>")
                continue
            c = cells.loc[key]
            links = _cell_links(col, c)
            value = fmt(c["mean"]) + ("" if math.isnan(c["half_width"]) else f" ± {fmt(c['half_width'])}")
            seeds = " ".join(f'<a href="{e(u)}">{e(s)}</a>' for s, u in links)
            row.append(f'<td><a href="{e(links[0][1])}">{e(value)}</a><br><span class="seeds">seeds {seeds} · '
                       f"rank {c['rank']:g}</span></td>")
        out.append("".join(row) + "</tr>")
    out += ["</tbody>", "</table>"]
    out += [f"<p>{e(n)}</p>" for n in col.notes]
    out += [f"<p>Experiment <code>{e(col.experiment)}</code> (id {e(col.experiment_id)}) in "
            f"<code>{e(col.tracking_uri)}</code>; generated by <code>noharm report</code>.</p>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def write(board: Board, col: Collection, out: str | Path) -> list[Path]:
    """`leaderboard.html` and `leaderboard.md` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.html", out / "leaderboard.md"]
    paths[0].write_text(to_html(board, col), encoding="utf-8", newline="\n")
    paths[1].write_text(to_markdown(board, col), encoding="utf-8", newline="\n")
    return paths
