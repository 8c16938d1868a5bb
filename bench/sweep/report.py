"""The end-of-sweep comparison table: every method (and each selector composition) against ERM.

Built from the FINISHED evaluate and compose runs in MLflow (`Tracker.frame`):
one row per (dataset, attribute, method or method + selector), mean over seeds
of the test metrics of its primary candidate, and how many groups it harms,
i.e. whose test accuracy is below pooled ERM's on the same seed.
Model selection used validation only; test numbers are reported, never used.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from noharm.analysis.collect import TIDY_COLUMNS, entry_label, tidy_rows
from noharm.analysis.record import metric_name, primary_candidate
from noharm.analysis.tables import below_erm_counts

COLUMNS = {"acc": "acc", "worst_acc": "acc/worst", "acc_gap": "acc/gap", "worst_auc": "auc/worst"}
KEYS = ["dataset", "target", "attribute"]


def _value(row: pd.Series, name: str) -> float:
    v = row.get(metric_name(name), math.nan)
    return math.nan if v is None or pd.isna(v) else float(v)


def _text(value) -> str:
    """A tag's text; a tag the run lacks is NaN in the wide frame."""
    return value if isinstance(value, str) else ""


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of `Tracker.frame` as the report's tidy table (one row per number)."""
    rows = []
    for r in frame.to_dict("records"):
        record = {"run": r["run_id"], "seed": int(r["seed"]), "groups": _text(r.get("groups")) or "[]",
                  **{k: _text(r.get(k)) for k in ("stage", *KEYS, "method", "strategy", "candidates")}}
        rows += tidy_rows(record, {k: v for k, v in r.items() if "/" in k and isinstance(v, (int, float))})
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its candidate's test metrics and the number of groups it harms: groups whose
    test accuracy is below ERM's on the same seed, counted by `analysis.tables.below_erm_counts` (the
    report's own definition), NaN without an ERM run to compare with."""
    if frame.empty:
        return pd.DataFrame()
    counts = below_erm_counts(_tidy(frame), "acc")
    counts = counts[counts["primary"]]
    harmed = {run: float(below) if known else math.nan
              for run, below, known in zip(counts["run"], counts["below"], counts["known"])}
    rows = []
    for _, r in frame.iterrows():
        strategy = _text(r.get("strategy"))
        cand = primary_candidate(r["stage"], _text(r.get("candidates")), strategy)
        label = entry_label(r["stage"], r["method"], strategy, cand, cand)
        out = {**{k: _text(r.get(k)) for k in KEYS}, "method": label, "candidate": cand, "seed": int(r["seed"])}
        for col, metric in COLUMNS.items():
            out[col] = _value(r, f"test/{cand}/{metric}")
        out["harmed_groups"] = harmed.get(r["run_id"], math.nan)
        rows.append(out)
    return pd.DataFrame(rows)


def comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean (and sd of worst-group accuracy) over seeds per dataset, attribute and method."""
    runs = per_run(frame)
    if runs.empty:
        return runs
    group = [*KEYS, "method", "candidate"]
    agg = runs.groupby(group, sort=True).agg(
        seeds=("seed", "nunique"), **{c: (c, "mean") for c in COLUMNS},
        worst_acc_sd=("worst_acc", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else math.nan),
        harmed_groups=("harmed_groups", "mean"),
    ).reset_index()
    order = {"erm": 0}
    agg["_o"] = agg["method"].map(lambda m: order.get(m, 1))
    return agg.sort_values([*KEYS, "_o", "method"]).drop(columns="_o").reset_index(drop=True)


def format_comparison(table: pd.DataFrame) -> str:
    """Per (dataset, attribute) blocks of the comparison table, as text for the terminal."""
    if table.empty:
        return "no finished evaluate runs to compare"
    blocks = []
    for (dataset, target, attribute), part in table.groupby(KEYS, sort=False):
        n = int(part["seeds"].max())
        head = (f"{dataset} (target {target}), groups by {attribute}: test metrics, mean over {n} seed"
                f"{'s' if n != 1 else ''}; harmed = groups below ERM's test accuracy on the same seed")
        shown = part[["method", "acc", "worst_acc", "worst_acc_sd", "acc_gap", "worst_auc", "harmed_groups"]]
        text = shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
        blocks.append(head + "\n" + text)
    return "\n\n".join(blocks) + ("\n\nHyperparameters, early stopping and selection used validation only.")
