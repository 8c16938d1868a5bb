"""Per-group tables for the terminal."""

from __future__ import annotations

import math

import pandas as pd

TABLE_METRICS = ("acc", "auc")


def group_frame(metrics: dict[str, float], split: str, candidate: str, group_names: list[str],
                reference: str | None = None) -> pd.DataFrame:
    """Rows overall / each group / worst / gap; columns accuracy and AUC of one candidate on one split.

    With a `reference` candidate (pooled ERM), a column says per group whether
    this candidate's accuracy is below the reference's ("HARM") or not ("ok").
    """
    rows = {"overall": "", **{g: f"/group:{g}" for g in group_names}, "worst group": "/worst", "gap": "/gap"}
    data = {
        m: [metrics.get(f"{split}/{candidate}/{m}{suffix}", math.nan) for suffix in rows.values()]
        for m in TABLE_METRICS
    }
    data = {"n": [metrics.get(f"{split}/{candidate}/n{s}", math.nan) if s.startswith("/group") else math.nan
                  for s in rows.values()], **data}
    frame = pd.DataFrame(data, index=list(rows))
    if reference and reference != candidate:
        flags = []
        for suffix in rows.values():
            ours = metrics.get(f"{split}/{candidate}/acc{suffix}", math.nan)
            theirs = metrics.get(f"{split}/{reference}/acc{suffix}", math.nan)
            flags.append("" if not suffix.startswith("/group") or math.isnan(ours) or math.isnan(theirs)
                         else ("HARM" if ours < theirs else "ok"))
        frame[f"vs {reference}"] = flags
    frame.index.name = f"{split} / {candidate}"
    return frame


def format_frame(frame: pd.DataFrame) -> str:
    def number(v):
        return "nan" if pd.isna(v) else f"{v:.4f}"

    def count(v):
        return "" if pd.isna(v) else f"{int(v)}"

    fmt = {c: count if c == "n" else number for c in frame.columns if c in ("n", *TABLE_METRICS)}
    return frame.to_string(formatters=fmt)


def trial_report(metrics: dict[str, float], candidates: list[str], group_names: list[str], splits=("val", "test")) -> str:
    """The per-group tables of every candidate on val and test, as text."""
    blocks = []
    reference = "erm" if "erm" in candidates else None
    for cand in candidates:
        for split in splits:
            if any(k.startswith(f"{split}/{cand}/") for k in metrics):
                blocks.append(format_frame(group_frame(metrics, split, cand, group_names, reference)))
    return "\n\n".join(blocks)
