"""Stress-test throughput (repeats per second per selector) and exact IP time up to 1,024 groups.

Run by hand: `.venv/bin/python bench/perf/stress_speed.py [--runs DIR]`. Appends to bench/perf/RESULTS.md.

1. Repeats per second: for each embedded dataset (adult with sex, sex+race,
   sex+age, sex+race+age; digits-shift with style), a FairSDE run and its ERM
   run (read from `--runs`, else trained here with a few epochs), every
   prediction-level scenario at one severity, each selector alone
   (`run_scenarios` with `--repeats` repeats; best of `--rounds`). Blind routing
   data is scored once beforehand (not timed). Goal: >= 1,000 repeats/s.
2. Exact IP time against the number of groups: `select(..., "ip-gap" /
   "ip-utility")` (PuLP/CBC, lexicographic stages) on random problems with G
   groups, G = 2 .. 1,024; and the vectorised enumeration used for G <= 10.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from noharm.bench.perf.common import append_results

CASES = [("adult", a, {"epochs": 2}) for a in ("sex", "sex+race", "sex+age", "sex+race+age")]
CASES += [("digits-shift", "style", {"epochs": 3, "backbone": "cnn", "batch_size": 64})]
SCENARIOS = [
    ({"kind": "val-group-fraction"}, 0.1),
    ({"kind": "val-size"}, 100),
    ({"kind": "label-shift"}, 0.2),
    ({"kind": "test-group-mix"}, 0.25),
    ({"kind": "val-size", "replace": True, "name": "val-size (bootstrap)"}, 100),
]
SELECTORS = ("greedy", "ip-gap", "ip-utility", "safe", "blind")


def run_folder(runs: Path, dataset: str, attribute: str, method: str, hp: dict) -> Path:
    """`<runs>/<dataset>-<attribute>-<method>-s0`, trained now when missing."""
    from noharm.bench.trial import TrialConfig, run_trial, save_trial

    folder = runs / f"{dataset}-{attribute}-{method}-s0"
    if not (folder / "predictions.parquet").is_file():
        print(f"training {method} on {dataset} ({attribute}) ...", flush=True)
        result = run_trial(TrialConfig(dataset=dataset, attribute=attribute, method=method, seed=0, hparams=hp),
                           device="auto")
        save_trial(result, folder, force=True)
    return folder


def stress_data(runs: Path, dataset: str, attribute: str, hp: dict):
    from noharm.bench.stress.run import routing_arrays
    from noharm.bench.stress.rescore import PairRescorer, RunFolder
    from noharm.bench.stress.runner import StressData

    method = RunFolder.read(run_folder(runs, dataset, attribute, "fairsde", hp))
    erm = RunFolder.read(run_folder(runs, dataset, attribute, "erm", hp))
    with tempfile.TemporaryDirectory() as cache:
        pred_group, routed = routing_arrays(method.predictions, PairRescorer(method, erm, "experts", cache_dir=cache))
    return StressData.from_predictions(method.predictions, erm.predictions, pred_group=pred_group,
                                       routed_proba=routed)


def repeats_per_second(data, spec: dict, severity: float, selector: str, repeats: int, rounds: int) -> float:
    from noharm.bench.stress.runner import StressSettings, run_scenarios
    from noharm.bench.stress.scenarios import make_scenarios

    scenarios = make_scenarios({**spec, "severities": [severity]}, "perf")
    settings = StressSettings(repeats=repeats, selectors=(selector,))
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        table, _ = run_scenarios(data, scenarios, settings)
        elapsed = time.perf_counter() - t0
        done = int(table["repeats"].iloc[0])
        best = max(best, done / elapsed)
    return best


def ip_times(sizes: list[int], reps: int) -> list[str]:
    from noharm.bench.stress.selection import MAX_ENUMERATE_GROUPS, enumerate_ip
    from noharm.methods.selection import select

    rows = ["| groups | ip-gap, PuLP/CBC (s) | ip-utility, PuLP/CBC (s) | enumeration, per problem (ms) |",
            "|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for g in sizes:
        times = {}
        for strategy in ("ip-gap", "ip-utility"):
            spent = []
            for _ in range(reps):
                expert, erm = rng.uniform(0.6, 0.95, g), rng.uniform(0.6, 0.95, g)
                sizes_ = rng.integers(20, 2000, g).astype(float)
                t0 = time.perf_counter()
                res = select(expert, erm, sizes_, strategy)
                spent.append(time.perf_counter() - t0)
                assert res.status == "Optimal", res.status
            times[strategy] = float(np.median(spent))
        enum = "-"
        if g <= MAX_ENUMERATE_GROUPS:
            r = 256
            expert, erm = rng.uniform(0.6, 0.95, (r, g)), rng.uniform(0.6, 0.95, (r, g))
            sizes_ = rng.integers(20, 2000, (r, g)).astype(float)
            t0 = time.perf_counter()
            enumerate_ip("ip-gap", expert, erm, sizes_)
            enum = f"{(time.perf_counter() - t0) / r * 1e3:.3f}"
        rows.append(f"| {g} | {times['ip-gap']:.3f} | {times['ip-utility']:.3f} | {enum} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=None, help="folder of run folders <dataset>-<attribute>-<method>-s0 "
                                                     "(default: a temporary folder, trained here)")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ip-reps", type=int, default=3)
    parser.add_argument("--max-groups", type=int, default=1024)
    args = parser.parse_args()

    tmp = None if args.runs else tempfile.TemporaryDirectory(prefix="noharm-stress-perf-")
    runs = Path(args.runs or tmp.name)
    header = "| dataset | attribute | groups | val / test rows | scenario | " + " | ".join(SELECTORS) + " |"
    rows = [header, "|" + "---|" * (5 + len(SELECTORS))]
    for dataset, attribute, hp in CASES:
        data = stress_data(runs, dataset, attribute, hp)
        for spec, severity in SCENARIOS:
            rates = [repeats_per_second(data, spec, severity, s, args.repeats, args.rounds) for s in SELECTORS]
            name = spec.get("name", spec["kind"])
            rows.append(f"| {dataset} | {attribute} | {data.n_groups} | {len(data.val.y)} / {len(data.test.y)} | "
                        f"{name} ({severity:g}) | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
            print(rows[-1], flush=True)
    sizes = [g for g in (2, 4, 8, 10, 16, 32, 64, 128, 256, 512, 1024) if g <= args.max_groups]
    ip_rows = ip_times(sizes, args.ip_reps)
    append_results(
        "stress_speed.py: stress repeats per second per selector, and exact IP time vs groups",
        f"Repeats per second (best of {args.rounds}, {args.repeats} repeats, one selector at a time; FairSDE vs "
        "ERM runs, blind routing scored beforehand). A severity that changes nothing would run once, so every "
        "case shifts something.\n\n" + "\n".join(rows) + "\n\n"
        f"Exact selection time (median of {args.ip_reps} random problems; PuLP/CBC, three lexicographic stages for "
        "ip-gap, two for ip-utility) and the vectorised 2^G enumeration the stress runner uses up to "
        "10 groups (ip-gap, per problem in a batch of 256).\n\n" + "\n".join(ip_rows))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
