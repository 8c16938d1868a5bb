"""Every registered method with its own defaults on every embedded dataset: does any group get one class?

Run by hand (sequentially; each trial is seconds to a minute on a 2-core CPU):

    PYTHONPATH=. python -m bench.perf.defaults_check --out /tmp/defaults.jsonl            # measure
    PYTHONPATH=. python -m bench.perf.defaults_check --out /tmp/defaults.jsonl --append   # table -> RESULTS.md

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
# The embedded datasets: (dataset, attribute, fixed hparams, dataset options). digits-shift runs the
# small CNN at 16 px (the default suite's setting); everything else is the declared default.
CASES = {
    "adult": ("sex", {}, {}),
    "german": ("sex", {}, {}),
    "digits-shift": ("style", {"backbone": "cnn"}, {"image_size": 16}),
}


def group_rows(predictions) -> list[dict]:
    """Per candidate and group of the test split: majority predicted class, its share, balanced accuracy."""
    from analysis import predictions as P

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


def measure(method: str, dataset: str) -> dict:
    """One trial of `method` on `dataset` with defaults (seed 0); its per-group rows and the budget used."""
    from bench.trial import TrialConfig, run_trial

    attribute, hparams, options = CASES[dataset]
    t0 = time.perf_counter()
    result = run_trial(TrialConfig(dataset=dataset, attribute=attribute, method=method, hparams=dict(hparams),
                                   dataset_options=dict(options)), device="cpu")
    return {"method": method, "dataset": dataset, "attribute": attribute, "set": hparams, "options": options,
            "budget": result.notes.get("budget", {}), "wall_seconds": time.perf_counter() - t0,
            "rows": group_rows(result.predictions)}


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def worst(record: dict) -> dict:
    """The (candidate, group) row with the largest one-class share."""
    return max(record["rows"], key=lambda r: r["share"])


def table(records: list[dict]) -> str:
    """Markdown: one line per (method, dataset) with the worst one-class share, and every flagged row."""
    lines = ["| method | dataset | budget (epochs, batch: source) | worst one-class share (candidate, group) | "
             "balanced acc there | min balanced acc | flagged | wall (s) |", "|---|---|---|---|---|---|---|---|"]
    flagged = []
    for r in sorted(records, key=lambda r: (r["dataset"], r["method"])):
        w = worst(r)
        budget = ", ".join(f"{k}={v['value']} ({v['source']})" for k, v in r["budget"].items()
                           if k in ("epochs", "batch_size"))
        single = [x for x in r["rows"] if x["share"] >= SINGLE_CLASS]
        flagged += [(r["method"], r["dataset"], x) for x in single]
        lines.append(f"| {r['method']} | {r['dataset']} | {budget} | {w['share']:.3f} ({w['candidate']}, "
                     f"{w['group']}) | {w['balanced_accuracy']:.3f} | "
                     f"{min(x['balanced_accuracy'] for x in r['rows']):.3f} | "
                     f"{'SINGLE CLASS' if single else ''} | {r['wall_seconds']:.0f} |")
    text = "\n".join(lines)
    if flagged:
        text += "\n\nSingle-class (share >= 0.999) candidate/group pairs:\n\n" + "\n".join(
            f"- {m} on {d}: {x['candidate']}, group {x['group']}: class {x['majority_class']} for "
            f"{x['share']:.3f} of test rows" for m, d, x in flagged)
    else:
        text += "\n\nNo candidate predicts a single class for any group."
    return text


def main(argv: list[str] | None = None) -> int:
    import torch

    from methods import METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="all", help="comma-separated method names, or all")
    p.add_argument("--datasets", default=",".join(CASES), help="comma-separated embedded datasets")
    p.add_argument("--out", default="defaults_check.jsonl", help="JSONL file of measured rows (appended)")
    p.add_argument("--rerun", action="store_true", help="measure again what --out already holds")
    p.add_argument("--append", action="store_true", help="only append the table of --out to RESULTS.md")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.append:
        from bench.perf.common import append_results

        append_results("defaults_check.py: every method's defaults on the embedded datasets",
                       table(load(out)) + "\n\n" + NOTE)
        return 0
    torch.set_num_threads(1)  # a shared 2-core machine; numbers as the tests see them
    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    done = {(r["method"], r["dataset"]) for r in load(out)} if not args.rerun else set()
    for dataset in args.datasets.split(","):
        for method in methods:
            if (method, dataset) in done:
                continue
            record = measure(method, dataset)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            w = worst(record)
            print(f"{method:22s} {dataset:13s} worst share {w['share']:.3f} ({w['candidate']}, {w['group']}) "
                  f"bal {w['balanced_accuracy']:.3f} {record['wall_seconds']:.0f}s "
                  f"{'SINGLE CLASS' if w['share'] >= SINGLE_CLASS else ''}", flush=True)
    return 0


NOTE = ("Seed 0, CPU, one torch thread, no hyperparameter set except digits-shift's `backbone=cnn` and "
        "`image_size=16` (the default suite's). Attribute: sex (adult, german), style (digits-shift). "
        "'worst one-class share' is, over every candidate and group, the largest test share of one predicted "
        "class; a share >= 0.999 is flagged. Balanced accuracy is of that candidate on that group's test rows.")


if __name__ == "__main__":
    raise SystemExit(main())
