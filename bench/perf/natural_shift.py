"""digits-shift's held-out styles: how far each moves ERM and FairSDE's experts per group, and what scoring them costs.

Run by hand: `.venv/bin/python bench/perf/natural_shift.py [--seeds 0,1,2] [--styles slant,thin,erode]`.
Appends to bench/perf/RESULTS.md:

1. per seed, method (ERM's `model`, FairSDE's `experts` and `selected:greedy`) and group: accuracy on the in-domain
   test split and on each `shift:<style>` split, with the default suite's digits-shift recipe (16 px, small CNN,
   10 epochs, best epoch on val/worst_group_auc);
2. the cost a held-out style adds to a trial: the trial's load and predict seconds with and without the styles
   (same seed, in this process; training is the same run), and the extra rows scored;
3. (`--cost-only`) the same cost as CPU seconds of this process (time.process_time, so other processes' load does
   not count): the dataset load with and without the styles, and scoring the shift rows with a trained model,
   each the median of `--repeats` runs.

A style is worth offering when it lowers accuracy (a real covariate shift) and leaves the minority group far above
chance (it still learns). The whole-process time of the default-suite trial with and without the styles is
measured with farm-bench (see the RESULTS.md entry for the command).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from noharm.bench.perf.common import append_results
from noharm.bench.trial import TrialConfig, run_trial
from noharm.datasets.digits_shift import STROKES

RECIPE = {"backbone": "cnn", "epochs": 10}
GROUPS = ("standard", "shifted")


def trial(method: str, seed: int, styles: list[str]):
    options = {"image_size": 16, **({"held_out_styles": styles} if styles else {})}
    cfg = TrialConfig(dataset="digits-shift", attribute="style", method=method, seed=seed, hparams=dict(RECIPE),
                      dataset_options=options, objective="val/worst_group_auc",
                      selectors=("greedy",) if method != "erm" else ())
    return run_trial(cfg, device="cpu")


def cpu_seconds(fn, repeats: int) -> float:
    """Median CPU seconds of this process over `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def cost_only(styles: list[str], repeats: int) -> str:
    """CPU seconds the styles add: loading (drawing the extra images) and scoring the extra rows."""
    from noharm.bench.task import load_task
    from noharm.datasets import get_dataset
    from noharm.methods import FitContext, get_method
    from noharm.methods.batches import eval_batch_size

    plain = get_dataset("digits-shift", image_size=16)
    styled = get_dataset("digits-shift", image_size=16, held_out_styles=styles)
    load_plain = cpu_seconds(lambda: plain.load(0), repeats)
    load_styled = cpu_seconds(lambda: styled.load(0), repeats)
    loaded = load_task(styled, "style", 0)
    task = loaded.task
    method = get_method("erm")({**RECIPE, "epochs": 1})
    batch = eval_batch_size(task.input_shape, torch.device("cpu"), method.hp["batch_size"])
    predictor = method.fit(task, FitContext(seed=0, eval_batch_size=batch))
    in_domain = np.flatnonzero(np.isin(task.split, ("val", "test")))
    shifted = np.flatnonzero(np.char.startswith(task.split.astype(str), "shift:"))
    score_in = cpu_seconds(lambda: predictor.predict_proba(task, in_domain), repeats)
    score_shift = cpu_seconds(lambda: predictor.predict_proba(task, shifted), repeats)
    return (f"CPU seconds of this process, median of {repeats} (styles {', '.join(styles)}; 16 px, small CNN, "
            f"1 thread):\n\n| step | without styles | with styles | added |\n|---|---|---|---|\n"
            f"| dataset load | {load_plain:.3f} | {load_styled:.3f} | {load_styled - load_plain:.3f} |\n"
            f"| scoring val + test ({len(in_domain)} rows) | {score_in:.3f} | {score_in:.3f} | 0 |\n"
            f"| scoring the shift splits ({len(shifted)} rows) | 0 | {score_shift:.3f} | {score_shift:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--styles", default=",".join(STROKES))
    parser.add_argument("--cost-only", action="store_true", help="only the CPU cost of the styles (3. above)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    styles = [s for s in args.styles.split(",") if s]
    if args.cost_only:
        body = cost_only(styles, args.repeats)
        print(body)
        append_results("natural_shift.py --cost-only: CPU cost of digits-shift's held-out styles", body)
        return
    splits = ["test", *(f"shift:{s}" for s in styles)]
    lines = ["| seed | model | group | " + " | ".join(splits) + " |", "|" + "---|" * (3 + len(splits))]
    costs = []
    for seed in seeds:
        for method in ("erm", "fairsde"):
            result = trial(method, seed, styles)
            candidates = ["model"] if method == "erm" else ["experts", "selected:greedy"]
            for cand in candidates:
                for g in GROUPS:
                    cells = [f"{result.metrics[f'{s}/{cand}/acc/group:{g}']:.3f}" for s in splits]
                    lines.append(f"| {seed} | {method} {cand} | {g} | " + " | ".join(cells) + " |")
            if method != "erm":
                use = result.notes["selection"]["greedy"]["use_expert"]
                lines.append(f"| {seed} | greedy keeps the expert for | {', '.join(g for g in GROUPS if use[g]) or '-'}"
                             + " |" * len(splits))
            if method == "erm":
                plain = trial("erm", seed, [])
                costs.append((seed, plain.cost, result.cost, len(plain.predictions), len(result.predictions)))
    cost_lines = ["| seed | load s (no styles / styles) | predict s (no styles / styles) | rows scored | wall s |",
                  "|---|---|---|---|---|"]
    for seed, a, b, n_a, n_b in costs:
        cost_lines.append(f"| {seed} | {a['load_seconds']:.2f} / {b['load_seconds']:.2f} | "
                          f"{a['predict_seconds']:.2f} / {b['predict_seconds']:.2f} | {n_a} / {n_b} | "
                          f"{a['wall_seconds']:.1f} / {b['wall_seconds']:.1f} |")
    body = (f"Styles {', '.join(styles)}; seeds {', '.join(map(str, seeds))}; digits-shift 16 px, CNN, 10 epochs, "
            "objective val/worst_group_auc (the default suite's recipe, defaults otherwise). Accuracy per group:\n\n"
            + "\n".join(lines) + "\n\nWhat the styles add to an ERM trial (same process, same seed):\n\n"
            + "\n".join(cost_lines))
    print(body)
    append_results("natural_shift.py: digits-shift held-out styles, accuracy per group and scoring cost", body)


if __name__ == "__main__":
    main()
