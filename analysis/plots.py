"""Figures of the report (matplotlib, Agg): per-group differences against ERM, accuracy versus gap with the
Pareto front, stress curves. Each figure is written as PNG and SVG with fixed metadata, so the same
numbers give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from noharm.analysis import stats
from noharm.analysis.tables import (AGGREGATES, ERM, METRIC_NAMES, METRICS, Protocol, group_positions, ordered_entries,
                             paired_values, task_slug, task_title)

FORMATS = ("png", "svg")
DPI = 110
# Fixed style: no dependence on a user's matplotlibrc, and SVG ids salted by a constant.
RC = {"svg.hashsalt": "noharm", "svg.fonttype": "none", "font.family": "DejaVu Sans", "font.size": 8,
      "axes.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": DPI,
      "savefig.dpi": DPI, "path.simplify": True}
# Titles sit at the top of their axes: where matplotlib's automatic placement puts them when no tick labels are
# on top (none here). Stating it spares that placement, which lays out every y tick label again on each of a
# figure's three draws (tight_layout, PNG, SVG): a third of the per-group bar plots' time.
TITLE_Y = 1.0
COLOURS = {"harm": "#c0392b", "better": "#2e86c1", "neutral": "#95a5a6", "erm": "#222222", "front": "#e67e22"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path) -> list[Path]:
    """`stem.png` and `stem.svg` without dates or version strings in their metadata; closes the figure."""
    plt = _pyplot()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = stem.with_suffix(f".{ext}")
        meta = {"Software": None} if ext == "png" else {"Date": None, "Creator": None}
        fig.savefig(path, format=ext, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when x is minimised and y maximised (ties: both kept), by x."""
    pts = [(float(a), float(b), i) for i, (a, b) in enumerate(zip(x, y)) if not (math.isnan(a) or math.isnan(b))]
    front = []
    for a, b, i in pts:
        dominated = any((a2 <= a and b2 >= b) and (a2 < a or b2 > b) for a2, b2, _ in pts)
        if not dominated:
            front.append((a, -b, i))
    return [i for _, _, i in sorted(front)]


def difference_intervals(tidy: pd.DataFrame, protocol: Protocol = Protocol()) -> pd.DataFrame:
    """Per (task, entry, metric, group): mean over seeds of (entry - ERM) with its paired t-interval and
    the harm p-value, for the primary entries of the comparison table."""
    pv = paired_values(tidy)
    pv = pv[pv["primary"] & ~pv["group"].isin(AGGREGATES) & pv["erm"].notna()]
    pv = pv[~((pv["method"] == ERM) & (pv["stage"] == "evaluate"))]
    rows = []
    keys = ["dataset", "target", "attribute", "entry", "metric", "group"]
    value, erm = pv["value"].to_numpy(), pv["erm"].to_numpy()
    for key, at in group_positions(pv, keys):
        ci = stats.t_interval(value[at] - erm[at], protocol.level)
        p = stats.harm_p_value(value[at], erm[at], protocol.test)
        rows.append({**dict(zip(keys, key)), "diff": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n,
                     "p_value": p, "harmed": bool(not math.isnan(p) and p < protocol.alpha and ci.mean < 0)})
    return pd.DataFrame(rows, columns=[*keys, "diff", "low", "high", "n", "p_value", "harmed"])


def _bar_colour(diff: float, harmed: bool) -> str:
    return COLOURS["harm"] if harmed else (COLOURS["better"] if diff > 0 else COLOURS["neutral"])


def group_bars(tidy: pd.DataFrame, task: tuple[str, str, str], groups: list[str], out: Path,
               protocol: Protocol = Protocol(), intervals: pd.DataFrame | None = None) -> list[Path]:
    """Per group (columns) and metric (rows): each method's test metric minus ERM's, mean over seeds with the
    paired t-interval; red where the group is harmed with confidence.

    `intervals` is `difference_intervals(tidy, protocol)` when the caller already has it (the report computes it
    once for every task instead of once per task).
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    d = difference_intervals(tidy, protocol) if intervals is None else intervals
    d = d[(d["dataset"] == task[0]) & (d["target"] == task[1]) & (d["attribute"] == task[2])]
    if d.empty:
        return []
    base = tidy[(tidy["dataset"] == task[0]) & (tidy["target"] == task[1]) & (tidy["attribute"] == task[2])
                & tidy["primary"] & (tidy["entry"] != "") & (tidy["split"] == "test")]
    entries = [e for e in ordered_entries(base) if e in set(d["entry"])]
    groups = [g for g in groups if g in set(d["group"])]
    # (metric, group) -> {entry: (diff, low, high, harmed)}: plain tuples, not a pandas lookup per bar.
    cells: dict[tuple[str, str], dict[str, tuple]] = {}
    for r in d[["metric", "group", "entry", "diff", "low", "high", "harmed"]].itertuples(index=False, name=None):
        cells.setdefault((r[0], r[1]), {})[r[2]] = r[3:]
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(METRICS), len(groups), squeeze=False, sharey=True,
                                 figsize=(1.2 + 2.6 * len(groups), 0.9 + 0.19 * len(entries) * len(METRICS)))
        ypos = np.arange(len(entries))[::-1]
        for i, metric in enumerate(METRICS):
            for j, group in enumerate(groups):
                ax = axes[i][j]
                part = cells.get((metric, group), {})
                rows = [(y, *part[e]) for y, e in zip(ypos, entries) if e in part]
                if rows:  # one call for the column's bars: the same rectangles as one call per bar
                    ax.barh([r[0] for r in rows], [r[1] for r in rows], height=0.7,
                            color=[_bar_colour(diff, harmed) for _, diff, _, _, harmed in rows])
                for y, diff, low, high, harmed in rows:
                    if not math.isnan(low):  # the line `ax.plot` would make, without its argument parsing
                        ax.add_line(Line2D([low, high], [y, y], color="#333333", linewidth=0.8))
                ax.axvline(0, color=COLOURS["erm"], linewidth=0.8)
                ax.set_title(f"{METRIC_NAMES[metric]}: {group}", y=TITLE_Y)
                # The y axes have no label; a fixed (empty) label spares laying out every y tick label per draw.
                ax.yaxis.set_label_coords(0.0, 0.5)
                if j == 0:  # the axes share y: the first column's labels name every row
                    ax.set_yticks(ypos, entries)
                ax.tick_params(axis="y", length=0)
                ax.set_xlabel(f"test {METRIC_NAMES[metric]} − ERM")
        fig.suptitle(f"{task_title(*task)}: difference to pooled ERM per group\n(mean over seeds with the "
                     f"{protocol.level:g} paired t-interval; red: below ERM with confidence, level {protocol.alpha:g}, "
                     f"uncorrected)",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the two-line title
        return save(fig, out / f"groups-{task_slug(*task)}")


def pareto(summary: pd.DataFrame, task: tuple[str, str, str], out: Path) -> list[Path]:
    """Overall test accuracy against the accuracy gap between groups, one point per method, Pareto front drawn."""
    plt = _pyplot()
    s = summary[summary["primary"] & (summary["dataset"] == task[0]) & (summary["target"] == task[1])
                & (summary["attribute"] == task[2]) & (summary["metric"] == "acc")]
    if s.empty:
        return []
    pivot = s.pivot_table(index="entry", columns="group", values="mean")
    if "overall" not in pivot or "gap" not in pivot:
        return []
    entries = [e for e in ordered_entries(s) if e in pivot.index]
    x = pivot.loc[entries, "gap"].to_numpy(dtype=float)
    y = pivot.loc[entries, "overall"].to_numpy(dtype=float)
    front = pareto_front(x, y)
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        others = [i for i in range(len(entries)) if i not in front]
        ax.scatter(x[others], y[others], s=14, color=COLOURS["neutral"], label="dominated", zorder=2)
        ax.plot(x[front], y[front], "-o", color=COLOURS["front"], markersize=4, linewidth=1.2,
                label="Pareto front (lower gap, higher accuracy)", zorder=3)
        for i in front:
            ax.annotate(entries[i], (x[i], y[i]), xytext=(4, 3), textcoords="offset points", fontsize=7)
        if ERM in entries:
            k = entries.index(ERM)
            ax.scatter([x[k]], [y[k]], s=40, marker="*", color=COLOURS["erm"], label="pooled ERM", zorder=4)
            if k not in front:
                ax.annotate(ERM, (x[k], y[k]), xytext=(4, -9), textcoords="offset points", fontsize=7)
        ax.set_xlabel("test accuracy gap between groups (lower is better)")
        ax.set_ylabel("overall test accuracy")
        ax.set_title(f"{task_title(*task)}: accuracy versus gap (mean over seeds)", y=TITLE_Y)
        ax.legend(loc="best", fontsize=7, frameon=False)
        fig.tight_layout()
        return save(fig, out / f"pareto-{task_slug(*task)}")


def stress_curves(stress_summary: pd.DataFrame, out: Path) -> list[Path]:
    """Harm rate against severity for each scenario (one figure each), a line per selector with its t-band."""
    plt = _pyplot()
    paths: list[Path] = []
    for scenario in stress_summary["scenario"].unique():
        part = stress_summary[stress_summary["scenario"] == scenario]
        severities = list(dict.fromkeys(part["severity"]))
        with plt.rc_context(RC):
            fig, ax = plt.subplots(figsize=(5.6, 3.6))
            for strategy in dict.fromkeys(part["strategy"]):
                line = part[part["strategy"] == strategy].set_index("severity").reindex(severities)
                xs = np.arange(len(severities))
                ax.plot(xs, line["harm_rate"], "-o", markersize=3, linewidth=1.2, label=strategy)
                low, high = line["harm_rate_low"].to_numpy(float), line["harm_rate_high"].to_numpy(float)
                if not np.isnan(low).all():
                    ax.fill_between(xs, np.clip(low, 0, 1), np.clip(high, 0, 1), alpha=0.15, linewidth=0)
            ax.set_xticks(np.arange(len(severities)), [f"{s:g}" for s in severities])
            ax.set_xlabel("severity (in the order of the stress suite)")
            ax.set_ylabel("harm rate")
            ax.set_ylim(-0.02, 1.02)
            n = int(part["runs"].max())
            ax.set_title(f"stress: {scenario} (mean over {n} run{'s' if n != 1 else ''})", y=TITLE_Y)
            ax.legend(fontsize=7, frameon=False)
            fig.tight_layout()
            paths += save(fig, out / f"stress-{task_slug(scenario, '', '')}")
    return paths


def cd_diagram(test, stem: Path, title: str) -> list[Path]:
    """The critical-difference diagram of a `stats.RankTest` (scikit-posthocs' drawing): mean ranks on the axis, the
    CD above it, and a bar joining entries whose Nemenyi p-value is at least alpha. Nothing without two blocks and
    two entries (no pairwise test then)."""
    import scikit_posthocs as sp

    if test is None or test.n_blocks < 2 or test.k < 2:
        return []
    plt = _pyplot()
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(8.0, 1.3 + 0.12 * test.k))
        # Entries go in as integers and get their names back afterwards: the library groups them in sets, whose
        # order for strings changes with Python's hash seed, and the same numbers must give the same bytes.
        names = list(test.mean_ranks.index)
        ranks = pd.Series(test.mean_ranks.to_numpy(), index=range(len(names)))
        sig = pd.DataFrame(test.nemenyi.loc[names, names].to_numpy(), index=ranks.index, columns=ranks.index)
        drawn = sp.critical_difference_diagram(ranks, sig, cd=test.cd, alpha=test.alpha, ax=ax, text_h_margin=0.02,
                                               label_props={"fontsize": 7}, label_fmt_left="{label}",
                                               label_fmt_right="{label}")
        order = list(ranks.sort_values().index)
        for text in drawn["labels"]:
            i = int(text.get_text())
            left = order.index(i) < (len(names) + 1) // 2  # the library's split of the labels into two sides
            text.set_text(f"{names[i]} ({ranks[i]:.2f})" if left else f"({ranks[i]:.2f}) {names[i]}")
        ax.set_xlim(1, test.k)  # the whole range of possible mean ranks, so the CD reads against it
        ax.set_title(title, fontsize=8, pad=24, y=TITLE_Y)
        fig.tight_layout()
        return save(fig, stem)
