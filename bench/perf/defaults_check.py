"""Every registered method with its own defaults on every embedded dataset: does any group get one class?

Run by hand (sequentially; each trial is seconds to a minute on a 2-core CPU):

    .venv/bin/python -m noharm.bench.perf.defaults_check --out /tmp/defaults.jsonl            # measure
    .venv/bin/python -m noharm.bench.perf.defaults_check --out /tmp/defaults.jsonl --append   # table -> RESULTS.md

Each (method, dataset) runs `run_trial` with no hyperparameter set (the dataset's declared budget, if
any, and the method's declared defaults) on seed 0, and records per candidate and group the test share
of the majority predicted class and the balanced accuracy. A share >= 0.999 is a single-class
prediction: a defect of the method's defaults (or of the dataset's budget), not a finding.
Measured rows are kept in the JSONL file, so a rerun skips what it already holds.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

SINGLE_CLASS = 0.999
NEAR_CHANCE = 0.55  # balanced accuracy below this on a group's test rows: barely better than a coin
# The embedded datasets: (dataset, attribute, fixed hparams, dataset options). digits-shift runs the
# small CNN at 16 px (the default suite's setting); everything else is the declared default.
CASES = {
    "adult": ("sex", {}, {}),
    "german": ("sex", {}, {}),
    "digits-shift": ("style", {"backbone": "cnn"}, {"image_size": 16}),
}


def group_rows(predictions) -> list[dict]:
    """Per candidate and group of the test split: majority predicted class, its share, balanced accuracy."""
    from noharm.analysis import predictions as P

    test = predictions[predictions["split"] == "test"]
    out = []
    for cand in P.candidates(test):
        pred = P.proba(test, cand).argmax(1)
        for group in sorted(test["group"].unique()):
            mask = (test["group"] == group).to_numpy()
            counts = np.bincount(pred[mask])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a group holding one true class
                bal = balanced_accuracy_score(test["y"].to_numpy()[mask], pred[mask])
            out.append({"candidate": cand, "group": str(group), "majority_class": int(counts.argmax()),
                        "share": float(counts.max() / mask.sum()), "balanced_accuracy": float(bal)})
    return out


def measure(method: str, dataset: str, seed: int = 0, extra: dict | None = None) -> dict:
    """One trial of `method` on `dataset` with defaults (plus `extra` set); per-group rows and the budget used."""
    from noharm.bench.trial import TrialConfig, run_trial

    attribute, hparams, options = CASES[dataset]
    hparams = {**hparams, **(extra or {})}
    t0 = time.perf_counter()
    result = run_trial(TrialConfig(dataset=dataset, attribute=attribute, method=method, seed=seed,
                                   hparams=dict(hparams), dataset_options=dict(options)), device="cpu")
    return {"method": method, "dataset": dataset, "attribute": attribute, "seed": seed, "set": hparams,
            "options": options, "budget": result.notes.get("budget", {}),
            "wall_seconds": time.perf_counter() - t0, "rows": group_rows(result.predictions)}


def case_of(record: dict) -> tuple:
    """What a measured row is of: (method, dataset, seed, what was set)."""
    return (record["method"], record["dataset"], record.get("seed", 0), json.dumps(record["set"], sort_keys=True))


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def worst(record: dict) -> dict:
    """The (candidate, group) row with the largest one-class share."""
    return max(record["rows"], key=lambda r: r["share"])


def hit_list(hits: list[tuple[dict, int]], most: int = 4) -> str:
    """`candidate/group sSEED (share, balanced accuracy)` of the first `most` hits, and how many more."""
    text = ", ".join(f"{x['candidate']}/{x['group']} s{sd} ({x['share']:.3f}, {x['balanced_accuracy']:.3f})"
                     for x, sd in hits[:most])
    return text + (f", ... {len(hits) - most} more" if len(hits) > most else "")


def table(records: list[dict]) -> str:
    """Markdown: per (dataset, settings, method) over its seeds, the worst one-class share; then every flag."""
    from noharm.bench.trial import budget_of, trial_hparams

    cases: dict[tuple, list[dict]] = {}
    for r in records:
        cases.setdefault((r["dataset"], json.dumps(r["set"], sort_keys=True), r["method"]), []).append(r)
    lines = ["| dataset | method | budget (source) | seeds | worst one-class share (candidate, group, seed) | "
             "balanced acc there | min balanced acc | flag | wall (s) |", "|---|---|---|---|---|---|---|---|---|"]
    flagged: list[str] = []
    for (dataset, _, method), runs in sorted(cases.items()):
        rows = [(x, r["seed"] if "seed" in r else 0) for r in runs for x in r["rows"]]
        w, wseed = max(rows, key=lambda t: t[0]["share"])
        r0 = runs[0]
        # Rows measured before trials recorded their budget: the same rule gives it back.
        budget = r0["budget"] or budget_of(dataset, *trial_hparams(method, dataset, r0["set"]))
        budget = ", ".join(f"{k}={v['value']} ({v['source']})" for k, v in budget.items())
        single = [(x, sd) for x, sd in rows if x["share"] >= SINGLE_CLASS]
        chance = [(x, sd) for x, sd in rows if x["balanced_accuracy"] < NEAR_CHANCE and x["share"] < SINGLE_CLASS]
        if single or chance:
            flagged.append(f"- {method} on {dataset} ({budget}): "
                           + "; ".join(f"{kind} ({len(hits)}): " + hit_list(hits)
                                       for kind, hits in (("single class", single), ("near chance", chance)) if hits))
        flag = " ".join(f for f, hit in (("SINGLE CLASS", single), ("near chance", chance)) if hit)
        lines.append(f"| {dataset} | {method} | {budget} | {','.join(str(r.get('seed', 0)) for r in runs)} | "
                     f"{w['share']:.3f} ({w['candidate']}, {w['group']}, {wseed}) | {w['balanced_accuracy']:.3f} | "
                     f"{min(x['balanced_accuracy'] for x, _ in rows):.3f} | {flag} | "
                     f"{max(r['wall_seconds'] for r in runs):.0f} |")
    text = "\n".join(lines)
    if flagged:
        text += (f"\n\nFlagged (candidate/group seed (one-class share, balanced accuracy)); single class: share >= "
                 f"{SINGLE_CLASS}; near chance: balanced accuracy < {NEAR_CHANCE}:\n\n") + "\n".join(flagged)
    else:
        text += "\n\nNo candidate predicts a single class, or is near chance, for any group."
    return text


def main(argv: list[str] | None = None) -> int:
    import torch
    import yaml

    from noharm.methods import METHODS
    from noharm.methods.hparams import parse_assignments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="all", help="comma-separated method names, or all")
    p.add_argument("--datasets", default=",".join(CASES), help="comma-separated embedded datasets")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="also set a hyperparameter (e.g. the budget before a dataset declared one); repeatable")
    p.add_argument("--out", default="defaults_check.jsonl", help="JSONL file of measured rows (appended)")
    p.add_argument("--rerun", action="store_true", help="measure again what --out already holds")
    p.add_argument("--append", action="store_true", help="only append the table of --out to RESULTS.md")
    p.add_argument("--title", default="every method's defaults on the embedded datasets",
                   help="with --append: the section's title")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.append:
        from noharm.bench.perf.common import append_results

        append_results(f"defaults_check.py: {args.title}",
                       table(load(out)) + "\n\n" + NOTE)
        return 0
    torch.set_num_threads(1)  # a shared 2-core machine; numbers as the tests see them
    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    extra = {k: yaml.safe_load(v) for k, v in parse_assignments(args.set).items()}
    done = {case_of(r) for r in load(out)} if not args.rerun else set()
    for seed in (int(x) for x in args.seeds.split(",")):
        for dataset in args.datasets.split(","):
            for method in methods:
                planned = {**CASES[dataset][1], **extra}
                if (method, dataset, seed, json.dumps(planned, sort_keys=True)) in done:
                    continue
                record = measure(method, dataset, seed, extra)
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                w = worst(record)
                print(f"{method:22s} {dataset:13s} s{seed} {extra or ''} worst share {w['share']:.3f} "
                      f"({w['candidate']}, {w['group']}) bal {w['balanced_accuracy']:.3f} "
                      f"{record['wall_seconds']:.0f}s {'SINGLE CLASS' if w['share'] >= SINGLE_CLASS else ''}",
                      flush=True)
    return 0


NOTE = ("CPU, one torch thread, seeds as listed; no hyperparameter set except digits-shift's `backbone=cnn` and "
        "`image_size=16` (the default suite's) and, where the budget column says `(set)`, the budget given with "
        "--set (german at the methods' old 10 epochs x batch 128, before it declared its own). Attribute: sex "
        "(adult, german), style (digits-shift). 'worst one-class share' is, over every candidate, group and seed, "
        "the largest test share of one predicted class; balanced accuracy is that candidate's on that group's test "
        "rows. Wall: the slowest seed's trial, on a 2-core machine shared with other jobs (noisy).")


if __name__ == "__main__":
    raise SystemExit(main())
