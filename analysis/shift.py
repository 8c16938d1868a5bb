"""Natural shift: did the no-harm choice made on in-domain validation harm a group out of domain?

Pure functions of the collected tidy table (`analysis.collect`). For every out-of-domain split `shift:<name>` a
run scored (no decision read it: training, early stopping, search and selection used in-domain validation):

- `shift_summary`: per (task, shift, entry, group) the entry's accuracy on the shift split, mean over seeds with its
  t-interval, ERM's on the same shift split and seeds, the one-sided paired test of "below ERM" over seeds
  (`stats.harm_p_value`) and its p-value adjusted over every harm test of the table (the report's correction,
  `Protocol.correction`), and the same entry's in-domain test accuracy beside it (the in-domain vs
  out-of-domain gap);
- `kept_and_lost`: per (compose run, group) whether the selector kept the expert on validation, and whether that
  expert then fell below ERM on the shift split (and on the in-domain test split);
- `natural_shift`: the table (a TableDoc for `tables.write_table`), `shift_plot` its figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from noharm.analysis import stats
from noharm.analysis.record import is_shift, shift_domain
from noharm.analysis.tables import (AGGREGATES, DAGGER, DDAGGER, ERM, NO_SELECTION, SELECTOR_ORDER, TASK, Block, Cell,
                                    Protocol, TableDoc, fmt, group_positions, number_cell, ordered_entries,
                                    paired_values, summarise, task_slug, task_title)

METRIC = "acc"  # what the selectors compare (their default) and what "harm" means in this table
LEVEL = 0.95  # Clopper-Pearson interval of a loss rate
SUMMARY_KEYS = [*TASK, "shift", "entry", "stage", "method", "strategy", "candidate", "primary", "group"]


def shift_splits(tidy: pd.DataFrame) -> list[str]:
    """The out-of-domain splits the collection holds, sorted."""
    return sorted(s for s in tidy["split"].unique() if is_shift(s))


def shift_summary(tidy: pd.DataFrame, protocol: Protocol = Protocol(), metric: str = METRIC) -> pd.DataFrame:
    """Per (task, shift, primary entry, group): n seeds, mean on the shift split with its t-interval, ERM's mean,
    mean difference, one-sided paired p-value over seeds, the p-value adjusted by `protocol.correction` over every
    non-ERM real-group test of this table (all shift splits: one family), `harmed` (raw) and `harmed_adj`; `test_mean` and `test_diff` (in domain, and minus ERM's)
    and `drop` = test − shift."""
    parts = []
    for split in shift_splits(tidy):
        s = summarise(tidy, protocol, (metric,), split)
        if len(s):
            parts.append(s[s["primary"]].assign(shift=split))
    columns = [*SUMMARY_KEYS, "n", "mean", "half_width", "erm_mean", "diff_mean", "p_value", "p_adjusted", "harmed",
               "harmed_adj", "test_mean", "test_diff", "drop", "seeds"]
    if not parts:
        return pd.DataFrame(columns=columns)
    out = pd.concat(parts, ignore_index=True)
    test = summarise(tidy, protocol, (metric,), "test")
    test = test[test["primary"]][[*TASK, "entry", "group", "mean", "diff_mean"]].rename(
        columns={"mean": "test_mean", "diff_mean": "test_diff"})
    out = out.merge(test, on=[*TASK, "entry", "group"], how="left")
    out["drop"] = out["test_mean"] - out["mean"]
    tested = ~out["group"].isin(AGGREGATES) & ~((out["method"] == ERM) & (out["stage"] == "evaluate"))
    out["p_adjusted"] = math.nan
    out.loc[tested, "p_adjusted"] = stats.adjust_p_values(out.loc[tested, "p_value"], protocol.correction)
    out["harmed_adj"] = out["harmed"] & (out["p_adjusted"] < protocol.alpha)
    return out[columns].sort_values(SUMMARY_KEYS, kind="mergesort").reset_index(drop=True)


def kept_and_lost(tidy: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Per (compose run, group): `kept` (the selector kept the expert, `selection/use_expert`), the composed
    accuracy on each shift split and on test next to ERM's on the same seed, and `lost` / `lost_test`: kept and
    below ERM there. Without selection (the wrapped methods' own experts, row `NO_SELECTION`) every group is kept."""
    choice = tidy[(tidy["split"] == "selection") & (tidy["metric"] == "use_expert")
                  & ~tidy["group"].isin(AGGREGATES)][["run", "group", "value"]].rename(columns={"value": "kept"})
    wrapped = tidy.loc[tidy["stage"] == "compose", [*TASK, "method"]].drop_duplicates()
    rows = []
    for split in shift_splits(tidy):
        pv = pd.concat([paired_values(tidy, (metric,), split).assign(split=split),
                        paired_values(tidy, (metric,), "test").assign(split="test")], ignore_index=True)
        pv = pv[pv["primary"] & ~pv["group"].isin(AGGREGATES) & pv["erm"].notna()]
        composed = pv[pv["stage"] == "compose"].merge(choice, on=["run", "group"], how="inner")
        own = pv[pv["stage"] == "evaluate"].merge(wrapped, on=[*TASK, "method"]).assign(kept=1.0, strategy=NO_SELECTION)
        both = pd.concat([composed, own], ignore_index=True).assign(shift=split)
        rows.append(both)
    columns = [*TASK, "shift", "method", "strategy", "seed", "run", "group", "kept", "value", "erm", "lost",
               "value_test", "erm_test", "lost_test"]
    if not rows:
        return pd.DataFrame(columns=columns)
    both = pd.concat(rows, ignore_index=True)
    keys = [*TASK, "shift", "method", "strategy", "seed", "run", "group"]
    wide = both.pivot_table(index=keys, columns="split", values=["value", "erm", "kept"], aggfunc="first")
    out = pd.DataFrame(index=wide.index).reset_index()
    for col in ("value", "erm"):
        out[col] = [wide[(col, s)].iloc[i] for i, s in enumerate(out["shift"])]
        out[f"{col}_test"] = wide[(col, "test")].to_numpy()
    out["kept"] = wide[("kept", "test")].to_numpy() > 0.5
    out["lost"] = out["kept"] & (out["value"] < out["erm"])
    out["lost_test"] = out["kept"] & (out["value_test"] < out["erm_test"])
    return out[columns].sort_values(keys, kind="mergesort").reset_index(drop=True)


def loss_rates(kept: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per (task, shift, strategy): (run, group) choices that kept the expert, how many lost to ERM out of domain
    (rate with its Clopper-Pearson interval, statsmodels) and on the in-domain test split."""
    from statsmodels.stats.proportion import proportion_confint

    columns = [*TASK, "shift", "strategy", "methods", "choices", "kept", "lost", "lost_rate", "lost_low", "lost_high",
               "lost_test"]
    if kept.empty:
        return pd.DataFrame(columns=columns)
    k = kept[kept["kept"]]
    agg = kept.groupby([*TASK, "shift", "strategy"], sort=True).agg(
        methods=("method", "nunique"), choices=("kept", "size")).reset_index()
    hits = k.groupby([*TASK, "shift", "strategy"], sort=True).agg(
        kept=("kept", "size"), lost=("lost", "sum"), lost_test=("lost_test", "sum")).reset_index()
    out = agg.merge(hits, on=[*TASK, "shift", "strategy"], how="left").fillna({"kept": 0, "lost": 0, "lost_test": 0})
    for col in ("kept", "lost", "lost_test"):
        out[col] = out[col].astype(int)
    n, x = out["kept"].to_numpy(), out["lost"].to_numpy()
    low, high = proportion_confint(x, np.maximum(n, 1), alpha=1 - level, method="beta")
    out["lost_rate"] = np.where(n > 0, x / np.maximum(n, 1), math.nan)
    out["lost_low"], out["lost_high"] = np.where(n > 0, low, math.nan), np.where(n > 0, high, math.nan)
    return out[columns]


def _strategy_order(strategy: str) -> tuple:
    if strategy == NO_SELECTION:
        return (-1, strategy)
    return (SELECTOR_ORDER.index(strategy) if strategy in SELECTOR_ORDER else len(SELECTOR_ORDER), strategy)


def _harm_cell(mean: float, half_width: float, harmed: bool, harmed_adj: bool) -> Cell:
    """The shift-split value with its verdict against ERM: DDAGGER after the correction, DAGGER without it only."""
    cell = number_cell(mean, half_width)
    cell.mark = DDAGGER if harmed_adj else DAGGER if harmed else ""
    return cell


def natural_shift(tidy: pd.DataFrame, protocol: Protocol = Protocol(), summary: pd.DataFrame | None = None,
                  kept: pd.DataFrame | None = None) -> TableDoc:
    """The natural-shift table: per task and shift split, a summary per strategy (experts kept on validation that
    lost to ERM out of domain, groups harmed out of domain) and the per-group detail (accuracy out of domain against
    ERM on the same split, and the drop from the in-domain test split)."""
    summary = shift_summary(tidy, protocol) if summary is None else summary
    kept = kept_and_lost(tidy) if kept is None else kept
    caption = (f"Natural shift: out-of-domain splits (shift:<name>) that no decision read. Training, early stopping, "
               f"search and the no-harm selection used the in-domain validation split only; each composition "
               f"keeps its in-domain choice on every shift split. Accuracy, mean over seeds. Harm out of domain: a "
               f"group's accuracy on the shift split below pooled ERM's on the same split and seed. {DDAGGER} marks a "
               f"group below ERM's with confidence after the {protocol.correction_name} correction over all "
               f"{int(summary['p_adjusted'].notna().sum())} harm tests of this table, {DAGGER} one below it only "
               f"without the correction ({protocol.test_name} over seeds, level {protocol.alpha:g}); 'groups "
               f"harmed' counts such (entry, group) pairs, uncorrected / corrected. 'kept → lost out of domain': "
               f"(run, group) choices where the selector kept the expert "
               f"and the expert's accuracy on the shift split fell below ERM's on the same seed, with the "
               f"{LEVEL:g} Clopper-Pearson interval of the rate; 'on test': the same on the in-domain test split. "
               f"'in − out': in-domain test accuracy minus shift accuracy. {protocol.protocol_text()}")
    if summary.empty:
        return TableDoc("shift", "Natural shift: no-harm selection out of domain", caption, [], summary,
                        ["no shift:<name> splits in this experiment: no natural-shift table (datasets take them "
                         "from a split file, shift=COLUMN:VALUE, held_out_styles or test_state/test_year)"])
    rates = loss_rates(kept)
    wrapped = set(map(tuple, kept[[*TASK, "method"]].drop_duplicates().itertuples(index=False, name=None)))
    blocks: list[Block] = []
    for (task_shift, at) in group_positions(summary, [*TASK, "shift"]):
        task, split = task_shift[:3], task_shift[3]
        part = summary.iloc[at]
        title = f"{task_title(*task)} · {split}"
        label = task_slug(*task) + "-" + task_slug(shift_domain(split), "", "")
        groups = [g for g in dict.fromkeys(part.loc[~part["group"].isin(AGGREGATES), "group"])]
        # Summary per strategy (the compositions and the wrapped methods' own experts).
        r = rates[(rates["dataset"] == task[0]) & (rates["target"] == task[1]) & (rates["attribute"] == task[2])
                  & (rates["shift"] == split)]
        real = part[~part["group"].isin(AGGREGATES)]
        srows = []
        for strategy in sorted(r["strategy"], key=_strategy_order):
            rr = r[r["strategy"] == strategy].iloc[0]
            sel = real[(real["strategy"] == strategy) if strategy != NO_SELECTION else
                       (real["stage"] == "evaluate") & real["method"].map(lambda m: (*task, m) in wrapped)]
            worst = part[(part["group"] == "worst") & part["entry"].isin(set(sel["entry"]))]
            rate = "–" if rr["kept"] == 0 else (f"{rr['lost']}/{rr['kept']} ({fmt(rr['lost_rate'], 2)}, "
                                                f"{fmt(rr['lost_low'], 2)}–{fmt(rr['lost_high'], 2)})")
            srows.append([strategy, Cell(str(int(rr["methods"]))), Cell(f"{rr['kept']}/{rr['choices']}"), Cell(rate),
                          Cell(f"{rr['lost_test']}/{rr['kept']}" if rr["kept"] else "–"),
                          Cell(f"{int(sel['harmed'].sum())} / {int(sel['harmed_adj'].sum())} (of {len(sel)})"),
                          Cell(fmt(float(worst["test_mean"].mean()))), Cell(fmt(float(worst["mean"].mean())))])
        if srows:
            blocks.append(Block(f"{title}: selection out of domain", [
                "strategy", "methods", "experts kept (run, group)", "kept → lost out of domain (rate, CI)",
                "kept → lost on test", f"groups harmed out of domain: raw / {protocol.correction} (of pairs)", "worst group: test",
                "worst group: shift"], srows, label=f"{label}-selection"))
        # Detail: every group out of domain, against ERM, and its drop from the in-domain test split.
        shown = part[(part["method"] == ERM) | part["method"].map(lambda m: (*task, m) in wrapped)]
        idx = shown.set_index(["entry", "group"])
        drows = []
        for entry in ordered_entries(shown):
            row: list[str | Cell] = [entry]
            for g in [*groups, "worst"]:
                if (entry, g) not in idx.index:
                    row += [Cell("–"), Cell("–")]
                    continue
                v = idx.loc[(entry, g)]
                row.append(_harm_cell(v["mean"], v["half_width"], bool(v["harmed"]), bool(v["harmed_adj"])))
                row.append(Cell(fmt(v["drop"])))
            drows.append(row)
        columns = ["entry"] + [f"{g}: {c}" for g in [*groups, "worst"] for c in ("shift acc", "in − out")]
        spans = [("", 1)] + [(g, 2) for g in [*groups, "worst"]]
        blocks.append(Block(f"{title}: accuracy per group", columns, drows, spans=spans, label=label,
                            short_columns=["entry"] + ["shift acc", "in − out"] * (len(groups) + 1)))
    # Long form: every (entry, group) of every shift split, with the runs that kept the expert and lost with it.
    counts = kept.groupby([*TASK, "shift", "method", "strategy", "group"], sort=True).agg(
        kept_runs=("kept", "sum"), lost_runs=("lost", "sum")).reset_index()
    counts["strategy"] = counts["strategy"].replace(NO_SELECTION, "")  # the method's own evaluate row
    data = summary.drop(columns=["seeds"]).merge(counts, on=[*TASK, "shift", "method", "strategy", "group"], how="left")
    return TableDoc("shift", "Natural shift: no-harm selection out of domain", caption, blocks, data,
                    notes=[] if len(rates) else ["no compositions: the natural-shift table shows accuracy only"])


def shift_plot(summary: pd.DataFrame, task: tuple[str, str, str], split: str, out: Path,
               protocol: Protocol = Protocol(), entries: Sequence[str] | None = None) -> list[Path]:
    """One point per (entry, group): its accuracy minus ERM's in domain (test, x) against out of domain (the shift
    split, y), mean over seeds; red where the group is below ERM out of domain with confidence (uncorrected; the
    label carries DDAGGER when the corrected verdict holds too). A point right of 0 and below 0 is a group the
    entry helped in domain and harmed out of domain. PNG and SVG."""
    from noharm.analysis.plots import COLOURS, RC, TITLE_Y, _pyplot, save

    s = summary[(summary["dataset"] == task[0]) & (summary["target"] == task[1]) & (summary["attribute"] == task[2])
                & (summary["shift"] == split) & ~summary["group"].isin(AGGREGATES)
                & ~((summary["method"] == ERM) & (summary["stage"] == "evaluate"))]
    if entries is not None:
        s = s[s["entry"].isin(set(entries))]
    s = s[s["diff_mean"].notna() & s["test_diff"].notna()]
    if s.empty:
        return []
    plt = _pyplot()
    markers = dict(zip(dict.fromkeys(s["group"]), "osD^v<>ph*"))
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        ax.axhline(0, color=COLOURS["erm"], linewidth=0.8)
        ax.axvline(0, color=COLOURS["erm"], linewidth=0.8)
        for group, marker in markers.items():
            g = s[s["group"] == group]
            for harmed, colour, z in ((False, COLOURS["better"], 3), (True, COLOURS["harm"], 4)):  # harm on top
                part = g[g["harmed"] == harmed]
                ax.scatter(part["test_diff"], part["diff_mean"], s=18, marker=marker, color=colour, zorder=z,
                           label=str(group) if not harmed else None)
            for r in g[g["harmed"]].itertuples(index=False):
                ax.annotate(r.entry + (DDAGGER if r.harmed_adj else ""), (r.test_diff, r.diff_mean), xytext=(4, -8),
                            textcoords="offset points", fontsize=6)
        ax.set_xlabel("in domain: test accuracy − ERM")
        ax.set_ylabel(f"out of domain: {split} accuracy − ERM")
        correction = stats.CORRECTIONS[protocol.correction][1]
        ax.set_title(f"{task_title(*task)} · {split}, mean over seeds\nred: below ERM out of domain with confidence "
                     f"({protocol.test_name},\nlevel {protocol.alpha:g}, uncorrected; {DDAGGER}: also after the "
                     f"{correction} correction)", y=TITLE_Y)
        ax.legend(title="group", fontsize=7, title_fontsize=7, frameon=False, loc="best")
        fig.tight_layout()
        return save(fig, out / f"shift-{task_slug(*task)}-{task_slug(shift_domain(split), '', '')}")
