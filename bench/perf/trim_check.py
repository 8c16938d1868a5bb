"""Does a trimmed default suite reach the same conclusions? Two results side by side, on their common seeds.

Each side is a report's `tidy.parquet` or an MLflow store (`sqlite:///.../mlflow.db`, experiment `default`).
Compared, with the report's own functions (`analysis.tables.summarise`, `analysis.leaderboard.build`):
- which groups each method harms: with 2+ common seeds, the report's rule (test accuracy or AUC below ERM's
  by a one-sided paired t-test over seeds); with one seed, test accuracy below ERM's on that seed;
- the top of the leaderboard (mean rank of worst-group test AUC);
- FairSDE's and its selectors' harmed-group counts;
- the selection table: per (task, strategy), groups below ERM per run and the share of experts kept.

    python -m noharm.bench.perf.trim_check BEFORE AFTER [--seeds 0] [--after-seeds 1] [--append TITLE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from noharm.analysis import leaderboard, tables
from noharm.analysis.collect import collect
from noharm.bench.perf.common import append_results

TASK = ["dataset", "target", "attribute"]
TOP = 10


def load_tidy(source: str) -> pd.DataFrame:
    """A report's tidy.parquet, or the tidy frame of experiment `default` in an MLflow store."""
    if source.endswith(".parquet"):
        return pd.read_parquet(source)
    uri = source if "://" in source else f"sqlite:///{Path(source).absolute()}"
    return collect("default", uri, stress=False).tidy


def harmed_groups(tidy: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(entry, grouping, group) harmed: the report's t-test over 2+ seeds, below ERM on one seed otherwise."""
    seeds = tidy["seed"].dropna().unique()
    if len(seeds) > 1:
        s = tables.summarise(tidy)
        s = s[s["harmed"] & s["primary"]]
        return {(e, a, g) for e, a, g in s[["entry", "attribute", "group"]].itertuples(index=False)}
    pv = tables.paired_values(tidy, ("acc",))
    pv = pv[~pv["group"].isin(tables.AGGREGATES) & pv["primary"] & (pv["value"] < pv["erm"])]
    return {(e, a, g) for e, a, g in pv[["entry", "attribute", "group"]].itertuples(index=False)}


def selection_rows(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per (grouping, strategy): groups below ERM per run (mean) and the share of (run, group) experts kept."""
    below = tables.below_erm_counts(tidy)
    below = below[(below["stage"] == "compose") | (below["candidate"] == "experts")]
    below = below.assign(strategy=below["strategy"].replace("", "no selection"))
    out = below.groupby(["attribute", "strategy"])["below"].mean().rename("below_per_run").reset_index()
    taken = tables.experts_taken(tidy)
    taken = taken.assign(kept=taken["experts_taken"] / taken["choices"])[["attribute", "strategy", "kept"]]
    return out.merge(taken, on=["attribute", "strategy"], how="left")


def conclusions(tidy: pd.DataFrame, seeds: list[int]) -> dict:
    tidy = tidy[tidy["seed"].isin(seeds)]
    harmed = harmed_groups(tidy)
    board = leaderboard.build(tables.summarise(tidy)).ranking
    fairsde = {e: sum(1 for h in harmed if h[0] == e) for e in sorted({h[0] for h in harmed} | set(board["entry"]))
               if e.startswith("fairsde")}
    return {"harmed": harmed, "top": list(board["entry"][:TOP]), "board": board, "fairsde": fairsde,
            "selection": selection_rows(tidy)}


def compare(before: dict, after: dict) -> str:
    lines = []
    only_b, only_a = sorted(before["harmed"] - after["harmed"]), sorted(after["harmed"] - before["harmed"])
    lines.append(f"- harmed (entry, grouping, group): {len(before['harmed'])} before, {len(after['harmed'])} after, "
                 f"{len(before['harmed'] & after['harmed'])} in both")
    for label, items in (("only before", only_b), ("only after", only_a)):
        if items:
            lines.append(f"  - {label}: " + "; ".join(f"{e} {a}:{g}" for e, a, g in items))
    lines.append(f"- leaderboard top {TOP} before: " + ", ".join(before["top"]))
    lines.append(f"- leaderboard top {TOP} after:  " + ", ".join(after["top"]))
    rank_b = before["board"].set_index("entry")["position"]
    rank_a = after["board"].set_index("entry")["position"]
    common = rank_b.index.intersection(rank_a.index)
    lines.append(f"- top-{TOP} overlap {len(set(before['top']) & set(after['top']))}/{TOP}; first place "
                 f"{before['top'][0]!r} -> {after['top'][0]!r}; Spearman rho of all {len(common)} positions "
                 f"{rank_b[common].corr(rank_a[common], method='spearman'):.3f}")
    fam = sorted(set(before["fairsde"]) | set(after["fairsde"]))
    lines.append("- FairSDE family harmed groups (before -> after): "
                 + ", ".join(f"{e} {before['fairsde'].get(e, 0)}->{after['fairsde'].get(e, 0)}" for e in fam))
    sel = before["selection"].merge(after["selection"], on=["attribute", "strategy"], suffixes=(" before", " after"))
    lines += ["", "| " + " | ".join(sel.columns) + " |", "|" + "---|" * len(sel.columns)]
    lines += ["| " + " | ".join(v if isinstance(v, str) else f"{v:.2f}" for v in row) + " |"
              for row in sel.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--seeds", help="comma-separated seeds (default: the seeds both sides have)")
    p.add_argument("--after-seeds", help="other seeds for the AFTER side: with BEFORE as AFTER, how much the "
                                         "conclusions move from one seed to another (the yardstick)")
    p.add_argument("--append", metavar="TITLE", help="append the comparison to bench/perf/RESULTS.md")
    args = p.parse_args(argv)
    b, a = load_tidy(args.before), load_tidy(args.after)
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else sorted(set(b["seed"].dropna().astype(int)) & set(a["seed"].dropna().astype(int))))
    after_seeds = [int(s) for s in args.after_seeds.split(",")] if args.after_seeds else seeds
    text = (f"Seeds compared: {seeds}" + (f" (before) with {after_seeds} (after)" if args.after_seeds else "")
            + ".\n\n" + compare(conclusions(b, seeds), conclusions(a, after_seeds)))
    print(text)
    if args.append:
        append_results(args.append, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
