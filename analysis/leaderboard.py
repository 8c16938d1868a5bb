"""The leaderboard: entries ranked across dataset/grouping pairs with the statistics of Demšar (2006), as a static
HTML page (each value linked to its MLflow runs), as Markdown that reads in a terminal (plain numbers, lines of at
most 120 characters) and as CSV.

Rule: the blocks are the (dataset, grouping) pairs; in each, the entries that ran on every pair are ranked by their
worst-group AUC on the ranked split (mean over seeds; 1 = best, ties share the average rank); the board orders them
by mean rank, ties broken by fewer harmed groups, then by name. Friedman's test (scipy) says whether the ranks differ
at all, Nemenyi's post-hoc test (scikit-posthocs) which pairs of entries do, with its critical difference; entries
missing a pair are listed apart, unranked (the tests need complete blocks). Beside the rank: the entry's mean
worst-group AUC, parity differences and ECE over the pairs, and its groups harmed with confidence after the report's
multiple-testing correction (uncorrected beside it).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noharm.analysis import stats
from noharm.analysis.collect import Collection, is_local, run_url
from noharm.analysis.tables import (AGGREGATES, FAIRNESS_METRICS, METRIC_NAMES, METRICS, TASK, Protocol, fmt,
                                    task_title)

RANK_METRIC, RANK_GROUP = "auc", "worst"
ENTRY_SETS = ("all", "methods")  # or the name of one selector: each method's own row plus its `+ <selector>` row
MAX_WIDTH = 120  # characters per line of leaderboard.md
PAIRS_PER_TABLE = 8  # the per-pair rank matrix of the Markdown is split so that its lines stay short
CD_PLOT = "plots/cd-diagram"  # the critical-difference diagram, relative to the report folder


@dataclass
class Board:
    """The ranking (one row per ranked entry), per (entry, pair) cells, the rank test and how the board was made."""

    # position, entry, mean_rank, p_vs_top, rank_value, <fairness metrics>, harmed, harmed_raw, tasks
    ranking: pd.DataFrame
    cells: pd.DataFrame  # entry, dataset, target, attribute, mean, half_width, rank, seeds, runs
    tasks: list[tuple[str, str, str]]
    rule: str
    test: stats.RankTest | None = None
    unranked: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["entry", "tasks"]))
    split: str = "test"
    entries: str = "all"
    statistics: str = ""
    correction: str = "holm"


def check_entries(entries: str, summary: pd.DataFrame) -> None:
    """`all`, `methods`, or a selector the experiment composed; ValueError with the choices otherwise."""
    selectors = sorted(set(summary.loc[summary["stage"] == "compose", "strategy"]))
    if entries not in ENTRY_SETS and entries not in selectors:
        raise ValueError(f"unknown --rank-entries {entries!r}; choose one of: {', '.join([*ENTRY_SETS, *selectors])}")


def _entry_filter(s: pd.DataFrame, entries: str) -> pd.DataFrame:
    if entries == "all":
        return s
    if entries == "methods":
        return s[s["stage"] == "evaluate"]
    return s[(s["stage"] == "evaluate") | (s["strategy"] == entries)]


def rule_text(protocol: Protocol, split: str = "test", entries: str = "all") -> str:
    """The ranking rule, stated on the page."""
    which = {"all": "every method's own row and every method + selector composition",
             "methods": "every method's own row (no selector compositions)"}.get(
        entries, f"every method's own row and its composition with the {entries} selector")
    return (f"Ranking rule: entries are {which}. For each dataset and grouping (a block), the entries that ran on "
            f"every block are ranked by worst-group AUC on the {split!r} split (mean over seeds; rank 1 = highest; ties share "
            f"the average rank); the board orders them by mean rank over the blocks, ties broken by fewer harmed groups, "
            f"then by name. Harmed groups: (block, group) cells where the group's accuracy or AUC on {split!r} is below "
            f"pooled ERM's with confidence ({protocol.test_name} over seeds, level {protocol.alpha:g}) after the "
            f"{protocol.correction_name} correction over all harm tests on that split; 'raw': without the correction. "
            f"DP, EOpp, EOdds, ECE: mean over blocks of the entry's mean over seeds, lower is better. Selection, early "
            f"stopping and hyperparameters used validation only, never test.")


def statistics_text(test: stats.RankTest | None) -> str:
    """What the rank test says, with its numbers (and what it cannot say)."""
    if test is None or test.k == 0:
        return "No entry ran on every dataset/grouping pair: nothing to rank or test."
    head = (f"Blocks: the N = {test.n_blocks} dataset/grouping pairs (seeds are averaged within a pair, not counted "
            f"as blocks: they share the data). Entries ranked: k = {test.k}.")
    if math.isnan(test.p_value):
        why = "one pair" if test.n_blocks < 2 else "fewer than three entries"
        return f"{head} With {why} there is no Friedman test: the order is descriptive only."
    verdict = ("at least one entry ranks differently from another" if test.significant else
               "no evidence that any entry ranks differently from another, so the order below is not a significant "
               "finding")
    top = test.mean_ranks.index[0]
    below = [e for e in test.mean_ranks.index[1:] if test.nemenyi.loc[top, e] < test.alpha]
    text = (f"{head} Friedman test (scipy): chi-square({test.k - 1}) = {test.statistic:.2f}, p = {test.p_value:.3g}: "
            f"{verdict} at level {test.alpha:g}. Nemenyi post-hoc test (scikit-posthocs): two entries differ at level "
            f"{test.alpha:g} when their mean ranks differ by more than the critical difference CD = {test.cd:.2f} "
            f"(q = {test.q_alpha:.3f}; Demšar 2006); "
            + (f"{len(below)} of the other {test.k - 1} entries rank significantly below #1 ({top})."
               if below else f"no entry ranks significantly below #1 ({top}): its Nemenyi p-values are in column "
                             f"'p vs #1'."))
    if test.cd >= test.k - 1:
        text += (f" Mean ranks can be at most {test.k - 1} apart, less than the CD: with {test.n_blocks} pairs and "
                 f"{test.k} entries no pair of entries can differ significantly; more pairs (datasets, groupings) or "
                 f"fewer entries (--rank-entries methods) give the test power.")
    if not test.significant:
        text += (" Post-hoc results are shown for completeness; Demšar reads them only after a significant Friedman "
                 "test.")
    return text


def build(summary: pd.DataFrame, protocol: Protocol = Protocol(), split: str = "test", entries: str = "all") -> Board:
    """The board from `tables.summarise(tidy, protocol, split=split)`: rank test, ranking and per-pair cells."""
    s = _entry_filter(summary[summary["primary"]], entries)
    cells = s[(s["metric"] == RANK_METRIC) & (s["group"] == RANK_GROUP)]
    cells = cells[[*TASK, "entry", "mean", "half_width", "seeds", "runs"]].dropna(subset=["mean"]).copy()
    tasks = sorted({tuple(t) for t in cells[TASK].itertuples(index=False, name=None)})
    count = cells.groupby("entry")["mean"].size()
    complete = sorted(count[count == len(tasks)].index)
    unranked = count[count < len(tasks)].rename("tasks").reset_index()
    cells = cells[cells["entry"].isin(complete)]
    test = None
    cells["rank"] = math.nan
    if complete:
        matrix = cells.pivot_table(index=TASK, columns="entry", values="mean").reindex(columns=complete)
        test = stats.friedman_nemenyi(matrix, protocol.alpha)
        ranks = test.ranks.stack().rename("rank").reset_index()
        cells = cells.drop(columns="rank").merge(ranks, on=[*TASK, "entry"], how="left")
    g = s[s["metric"].isin(METRICS) & ~s["group"].isin(AGGREGATES)]
    per_group = g.groupby([*TASK, "entry", "group"])[["harmed_adj", "harmed"]].any().groupby("entry").sum()
    fair = s[s["metric"].isin(FAIRNESS_METRICS) & (s["group"] == "overall")]
    fair = fair.pivot_table(index="entry", columns="metric", values="mean", aggfunc="mean")
    rows = []
    for entry in complete:
        rows.append({"entry": entry, "mean_rank": float(test.mean_ranks[entry]),
                     "p_vs_top": math.nan, "rank_value": float(cells.loc[cells["entry"] == entry, "mean"].mean()),
                     **{m: float(fair.loc[entry, m]) if entry in fair.index and m in fair.columns else math.nan
                        for m in FAIRNESS_METRICS},
                     "harmed": int(per_group.loc[entry, "harmed_adj"]) if entry in per_group.index else 0,
                     "harmed_raw": int(per_group.loc[entry, "harmed"]) if entry in per_group.index else 0,
                     "tasks": len(tasks)})
    rank = pd.DataFrame(rows, columns=["entry", "mean_rank", "p_vs_top", "rank_value", *FAIRNESS_METRICS, "harmed",
                                       "harmed_raw", "tasks"])
    rank = rank.sort_values(["mean_rank", "harmed", "entry"], kind="mergesort").reset_index(drop=True)
    if len(rank) and test is not None:
        top = rank["entry"].iloc[0]
        rank["p_vs_top"] = [math.nan if e == top else float(test.nemenyi.loc[top, e]) for e in rank["entry"]]
    rank.insert(0, "position", range(1, len(rank) + 1))
    return Board(rank, cells.sort_values([*TASK, "entry"]).reset_index(drop=True), tasks,
                 rule_text(protocol, split, entries), test, unranked, split, entries, statistics_text(test),
                 protocol.correction)


def _links_note(col: Collection, store: str) -> str:
    if is_local(col.tracking_uri):
        return (f"Each value links to the run of its first seed and each seed number to that seed's run, in the MLflow "
                f"UI of this local store: start it from the project folder with "
                f"`mlflow ui --backend-store-uri {store}` "
                f"(it serves http://127.0.0.1:5000, the address the links use).")
    return f"Each value links to the run of its first seed and each seed number to that seed's run on {store}."


def _cell_links(col: Collection, row) -> list[tuple[str, str]]:
    seeds = str(row["seeds"]).split(",")
    runs = str(row["runs"]).split(",")
    return [(s, run_url(col.tracking_uri, col.experiment_id, r)) for s, r in zip(seeds, runs)]


_HEAD = ["#", "entry", "mean rank", "p vs #1", "worst AUC", *[METRIC_NAMES[m].removesuffix(" diff")
                                                              for m in FAIRNESS_METRICS], "harmed", "raw", "pairs"]


def _row_values(r) -> list[str]:
    return [str(r.position), r.entry, f"{r.mean_rank:.2f}", fmt(r.p_vs_top), fmt(r.rank_value),
            *[fmt(getattr(r, m)) for m in FAIRNESS_METRICS], str(r.harmed), str(r.harmed_raw), str(r.tasks)]


def _md_table(head: list[str], rows: list[list[str]], text_columns: int = 2) -> list[str]:
    esc = lambda t: t.replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(esc(h) for h in head) + " |",
             "|" + "|".join(":---" if i < text_columns else "---:" for i in range(len(head))) + "|"]
            + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows])


def _wrap(text: str, width: int = MAX_WIDTH) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False) or [""]


def to_markdown(board: Board, col: Collection, store: str) -> str:
    """The leaderboard as Markdown for a terminal or GitHub: plain numbers, no links, lines of at most 120
    characters (prose wrapped; the per-pair ranks split into tables of PAIRS_PER_TABLE pairs)."""
    lines = [f"# Leaderboard: {col.experiment}", ""]
    for para in (board.rule, board.statistics,
                 f"Critical-difference diagram: {CD_PLOT}.png ({CD_PLOT}.svg). Values with their seeds and links to "
                 f"every MLflow run: leaderboard.html; all numbers: leaderboard.csv."):
        lines += [*_wrap(para), ""]
    head = [h if h != "harmed" else f"harmed ({board.correction})" for h in _HEAD]
    lines += _md_table(head, [_row_values(r) for r in board.ranking.itertuples(index=False)])
    lines.append("")
    if len(board.unranked):
        lines += [*_wrap("Not ranked (missing some dataset/grouping pairs, so outside the complete blocks the tests "
                         "need): " + ", ".join(f"{r.entry} ({r.tasks} of {len(board.tasks)})"
                                              for r in board.unranked.itertuples(index=False)) + "."), ""]
    if board.tasks and len(board.ranking):
        lines += ["## Rank per dataset and grouping", ""]
        codes = {t: f"P{i + 1}" for i, t in enumerate(board.tasks)}
        lines += [f"- {codes[t]}: {task_title(*t)}" for t in board.tasks] + [""]
        ranks = board.cells.set_index(["entry", *TASK])["rank"]
        for start in range(0, len(board.tasks), PAIRS_PER_TABLE):
            chunk = board.tasks[start:start + PAIRS_PER_TABLE]
            rows = [[str(r.position), r.entry, *[f"{ranks.get((r.entry, *t), math.nan):g}" for t in chunk]]
                    for r in board.ranking.itertuples(index=False)]
            lines += _md_table(["#", "entry", *[codes[t] for t in chunk]], rows) + [""]
    # Not wrapped: where the store is (its length varies with the machine's folders) must not move the line breaks.
    lines += [f"Generated by `noharm report` from experiment `{col.experiment}` in:", f"`{store}`"]
    return "\n".join(lines).rstrip("\n") + "\n"


def to_csv(board: Board) -> str:
    """The ranking with every number at full precision, then the unranked entries (mean_rank empty)."""
    frame = pd.concat([board.ranking, board.unranked.assign(position=pd.NA)], ignore_index=True)
    head = "".join(f"# {line}\n" for line in (board.rule, board.statistics))
    return head + frame.to_csv(index=False, lineterminator="\n")


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222;max-width:100em}
table{border-collapse:collapse;font-size:14px}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td.name,th.name{text-align:left}tr.top td{font-weight:600}
.seeds{font-size:11px;color:#666}.harm{color:#c0392b;font-weight:600}p.rule{max-width:60em}a{color:#1f5f99}
img.cd{max-width:60em;width:100%}"""


def _code(escaped: str) -> str:
    """`x` spans of already-escaped text as <code>x</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def to_html(board: Board, col: Collection, store: str, cd_plot: bool = False) -> str:
    """A static, self-contained HTML page (no scripts, no external resources) with the ranked table."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>noharm leaderboard: {e(col.experiment)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>Leaderboard: {e(col.experiment)}</h1>", f'<p class="rule" id="rule">{e(board.rule)}</p>',
           f'<p class="rule" id="statistics">{e(board.statistics)}</p>']
    if cd_plot:
        out.append(f'<p><a href="{CD_PLOT}.svg"><img class="cd" src="{CD_PLOT}.svg" alt="critical-difference diagram">'
                   f"</a></p>")
    out += [f'<p class="rule" id="links">{_code(e(_links_note(col, store)))}</p>',
            '<table id="leaderboard">', "<thead><tr>"]
    head = [h if h != "harmed" else f"harmed ({board.correction})" for h in _HEAD]
    out += [('<th class="name">' if h == "entry" else "<th>") + f"{e(h)}</th>" for h in head]
    out += [f"<th>{e(task_title(*t))}<br><small>worst-group AUC</small></th>" for t in board.tasks]
    out += ["</tr></thead>", "<tbody>"]
    cells = board.cells.set_index(["entry", *TASK])
    for r in board.ranking.itertuples(index=False):
        cls = ' class="top"' if r.position == 1 else ""
        values = _row_values(r)
        values[-3] = f'<span class="harm">{r.harmed}</span>' if r.harmed else "0"
        row = [f'<tr{cls} data-method="{e(r.entry)}">']
        row += [f'<td class="name">{e(v)}</td>' if i == 1 else (f"<td>{v}</td>" if i == len(values) - 3
                                                               else f"<td>{e(v)}</td>") for i, v in enumerate(values)]
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
    if len(board.unranked):
        out.append("<p>Not ranked (missing some dataset/grouping pairs): " + e(", ".join(
            f"{r.entry} ({r.tasks} of {len(board.tasks)})" for r in board.unranked.itertuples(index=False))) + ".</p>")
    out += [f"<p>{e(n)}</p>" for n in col.notes]
    out += [f"<p>Experiment <code>{e(col.experiment)}</code> (id {e(col.experiment_id)}) in "
            f"<code>{e(store)}</code>; generated by <code>noharm report</code>.</p>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def write(board: Board, col: Collection, out: str | Path, store: str, cd_plot: bool = False) -> list[Path]:
    """`leaderboard.html`, `leaderboard.md` and `leaderboard.csv` in `out`; `store` is the tracking URI as the page
    shows it (portable: analysis.report.portable_uri)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.html", out / "leaderboard.md", out / "leaderboard.csv"]
    paths[0].write_text(to_html(board, col, store, cd_plot), encoding="utf-8", newline="\n")
    paths[1].write_text(to_markdown(board, col, store), encoding="utf-8", newline="\n")
    paths[2].write_text(to_csv(board), encoding="utf-8", newline="\n")
    return paths
