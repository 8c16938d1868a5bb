"""Per-group tables for the terminal: one table per split and metric, a column per candidate."""

from __future__ import annotations

import math

import pandas as pd

from noharm.analysis.record import GROUP_MARK, is_scored, scored_splits

TABLE_METRICS = {"acc": "accuracy", "auc": "AUC"}
HARM_MARK = " !"  # a group's value below the reference (pooled ERM) on the same split


def split_frame(metrics: dict[str, float], split: str, metric: str, candidates: list[str],
                group_names: list[str], reference: str | None = None) -> pd.DataFrame:
    """Rows overall / each group (with n) / worst group / gap; a column per candidate, as text.

    With a `reference` candidate, a group whose value is below the reference's
    is marked with '!' (harm on this split).
    """
    suffixes = {"overall": "", **{g: f"{GROUP_MARK}{g}" for g in group_names}, "worst group": "/worst", "gap": "/gap"}
    index = []
    for label, suffix in suffixes.items():
        n = metrics.get(f"{split}/{candidates[0]}/n{suffix}") if suffix.startswith("/group") else None
        index.append(f"{label} (n={int(n)})" if n is not None and not math.isnan(n) else label)
    columns = {}
    for cand in candidates:
        cells = []
        for suffix in suffixes.values():
            value = metrics.get(f"{split}/{cand}/{metric}{suffix}", math.nan)
            text = "nan" if math.isnan(value) else f"{value:.4f}"
            if reference and cand != reference and suffix.startswith("/group"):
                ref = metrics.get(f"{split}/{reference}/{metric}{suffix}", math.nan)
                if not (math.isnan(value) or math.isnan(ref)) and value < ref:
                    text += HARM_MARK
            cells.append(text)
        columns[cand] = cells
    frame = pd.DataFrame(columns, index=index)
    frame.index.name = f"{split} {TABLE_METRICS.get(metric, metric)}"
    return frame


def trial_report(metrics: dict[str, float], candidates: list[str], group_names: list[str],
                 splits=None) -> str:
    """The per-group tables of every candidate (accuracy and AUC on each split), as text.

    `splits` defaults to every scored split the metrics name: val, test, then the shift splits."""
    reference = "erm" if "erm" in candidates else None
    if splits is None:
        splits = scored_splits(head for head in {k.split("/", 1)[0] for k in metrics} if is_scored(head))
    blocks = []
    for split in splits:
        present = [c for c in candidates if f"{split}/{c}/acc" in metrics]
        present.sort(key=lambda c: c != reference)  # the reference column first
        if not present:
            continue
        for metric in TABLE_METRICS:
            blocks.append(split_frame(metrics, split, metric, present, group_names, reference).to_string())
    if reference:
        blocks.append(f"'!' marks a group below pooled ERM ({reference}) on that split.")
    return "\n\n".join(blocks)
