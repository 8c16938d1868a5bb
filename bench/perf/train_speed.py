"""ResNet-18 training speed of noharm's loop against a bare PyTorch loop, at 32, 64 and 224 px.

Run by hand: `.venv/bin/python bench/perf/train_speed.py [--sizes 32 64 224] [--steps 6]`.
Appends to bench/perf/RESULTS.md. Goals: fp32 ratio >= 0.95 of bare; bf16 speed-up over bare fp32
reported as measured. Also: time to the first training step of a whole `noharm trial`
and evaluation time per 1,000 images, against the bare loop's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from noharm.bench.perf.common import append_results
from noharm.methods.backbones import build_backbone
from noharm.methods.base import FitContext, TaskData
from noharm.methods.erm import ERM
from noharm.methods.training import Classifier, train

BATCH = 64


def synthetic_task(size: int, n: int) -> TaskData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    y = rng.integers(0, 2, n).astype(np.int64)
    return TaskData(x=x, y=y, group=(np.arange(n) % 2).astype(np.int64), split=np.full(n, "train"),
                    n_groups=2, group_names=("a", "b"), num_classes=2, kind="image")


def ours(size: int, steps: int, precision: str) -> float:
    """Samples per second of noharm's training loop (no validation): two epochs of `steps` batches, as `bare`."""
    task = synthetic_task(size, BATCH * steps)
    method = ERM({"backbone": "resnet18", "batch_size": BATCH, "epochs": 2, "schedule": "none"})
    ctx = FitContext(device=torch.device("cpu"), seed=0, precision=precision)
    stats = train(method, task, ctx).stats
    return stats["train_samples"] / stats["train_seconds"]


def bare(size: int, steps: int, precision: str = "fp32") -> float:
    task = synthetic_task(size, BATCH * steps)
    torch.manual_seed(0)
    model = Classifier(build_backbone("resnet18", task.input_shape, "image"), 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.from_numpy(task.x)
    y = torch.from_numpy(task.y)
    mean, std = 127.5, 64.0
    seen, elapsed = 0, 0.0
    model.train()
    for epoch in range(2):
        t0 = time.perf_counter()
        for i in range(0, len(x), BATCH):
            xb = (x[i:i + BATCH].float() - mean) / std
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(xb), y[i:i + BATCH])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(xb)
        elapsed += time.perf_counter() - t0
    return seen / elapsed


def eval_per_1000(size: int) -> tuple[float, float]:
    """Seconds per 1,000 images: noharm's inference (its sized batch, inference mode) vs a bare eval loop at batch 64."""
    task = synthetic_task(size, 512)
    method = ERM({"backbone": "resnet18", "batch_size": BATCH, "epochs": 1})
    ctx = FitContext(device=torch.device("cpu"), seed=0)  # evaluation batch sized by methods.batches
    pred = train(method, task, ctx)
    t0 = time.perf_counter()
    pred.predict_proba(task, np.arange(len(task.y)))
    ours_s = (time.perf_counter() - t0) / len(task.y) * 1000
    model = pred.model.eval()
    x = torch.from_numpy(task.x)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            torch.softmax(model((x[i:i + BATCH].float() - 127.5) / 64.0), 1)
    bare_s = (time.perf_counter() - t0) / len(task.y) * 1000
    return ours_s, bare_s


def first_step() -> float:
    """Time from the start of a digits-shift trial (dataset load included) to its first training step."""
    from noharm.bench.trial import TrialConfig, run_trial

    res = run_trial(TrialConfig(dataset="digits-shift", attribute="style", method="erm",
                                hparams={"epochs": 1, "backbone": "resnet18"}), device="cpu")
    return res.cost["time_to_first_step_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--steps", type=int, default=6, help="batches per epoch (224 px: each takes seconds)")
    args = parser.parse_args()
    rows = ["| px | bare fp32 (img/s) | noharm fp32 (img/s) | fp32 ratio | bare bf16 | noharm bf16 (channels-last) | bf16 / bare fp32 |",
            "|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        steps = max(2, args.steps // 3) if size >= 224 else args.steps
        b32, o32 = bare(size, steps), ours(size, steps, "fp32")
        b16, o16 = bare(size, steps, "bf16"), ours(size, steps, "bf16")
        rows.append(f"| {size} | {b32:.0f} | {o32:.0f} | {o32 / b32:.3f} | {b16:.0f} | {o16:.0f} | {o16 / b32:.2f} |")
        print(rows[-1], flush=True)
    e_ours, e_bare = eval_per_1000(64)
    fs = first_step()
    body = "\n".join(rows) + (
        f"\n\nResNet-18 (small-input stem at <= 64 px), batch {BATCH}, AdamW, CPU; two epochs timed on both sides, "
        f"synthetic uint8 images.\n\nEvaluation at 64 px: noharm {e_ours:.2f} s per 1,000 images (inference mode, "
        f"sized batch) vs bare no-grad loop at batch 64 {e_bare:.2f} s.\n\n"
        f"Time to first training step of a whole `noharm trial` on digits-shift (imports excluded; dataset build, "
        f"model build included): {fs:.2f} s.")
    append_results("train_speed.py: noharm training loop vs bare PyTorch (ResNet-18)", body)


if __name__ == "__main__":
    main()
