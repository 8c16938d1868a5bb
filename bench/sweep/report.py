"""The end-of-sweep comparison table: every method (and each selector composition) against ERM.

Built from the FINISHED evaluate and compose runs in MLflow (`Tracker.frame`):
one row per (dataset, attribute, method or method + selector), mean over seeds
of the test metrics of its primary candidate, and how many groups it harms,
i.e. whose test accuracy is below pooled ERM's on the same seed.
Model selection used validation only; test numbers are reported, never used.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from noharm.bench.tracking import metric_name

COLUMNS = {"acc": "acc", "worst_acc": "acc/worst", "acc_gap": "acc/gap", "worst_auc": "auc/worst"}
KEYS = ["dataset", "target", "attribute"]


def _value(row: pd.Series, name: str) -> float:
    v = row.get(metric_name(name), math.nan)
    return math.nan if v is None or pd.isna(v) else float(v)


def per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its candidate's test metrics and the number of groups it harms."""
    if frame.empty:
        return pd.DataFrame()
    frame = frame.copy()
    for col in ("strategy", "target"):
        if col not in frame.columns:
            frame[col] = ""
    frame[["strategy", "target"]] = frame[["strategy", "target"]].fillna("")
    erm = frame[(frame["stage"] == "evaluate") & (frame["method"] == "erm")]
    erm_by = {tuple(r[k] for k in (*KEYS, "seed")): r for _, r in erm.iterrows()}
    rows = []
    for _, r in frame.iterrows():
        if r["stage"] == "compose":
            cand, label = f"selected:{r['strategy']}", f"{r['method']} + {r['strategy']}"
        else:
            cand, label = str(r.get("candidates", "model")).split(",")[0], r["method"]
        out = {**{k: r[k] for k in KEYS}, "method": label, "candidate": cand, "seed": int(r["seed"])}
        for col, metric in COLUMNS.items():
            out[col] = _value(r, f"test/{cand}/{metric}")
        ref = erm_by.get(tuple(r[k] for k in (*KEYS, "seed")))
        harmed = math.nan
        if ref is not None:
            groups = json.loads(r.get("groups") or "[]")
            diffs = [_value(r, f"test/{cand}/acc/group:{g}") - _value(ref, f"test/model/acc/group:{g}") for g in groups]
            harmed = float(sum(d < 0 for d in diffs if not math.isnan(d)))
        out["harmed_groups"] = harmed
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
