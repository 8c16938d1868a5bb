"""Training throughput of `noharm trial` against a bare PyTorch loop (same model, data, batch size).

Run by hand: `.venv/bin/python bench/perf/trial_overhead.py`. Appends to bench/perf/RESULTS.md.
Goal: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from noharm.bench.trial import TrialConfig, run_trial
from noharm.datasets import get_dataset
from noharm.methods.backbones import build_backbone
from noharm.methods.training import Classifier

from noharm.bench.perf.common import append_results


def bare_loop(dataset: str, hp: dict, seed: int = 0) -> float:
    """Samples per second of a plain loop: same model, optimiser, schedule, batches; no evaluation."""
    bundle = get_dataset(dataset).load(seed)
    train = np.flatnonzero(bundle.table["split"].to_numpy() == "train")
    x = torch.from_numpy(np.ascontiguousarray(bundle.x))
    y = torch.from_numpy(bundle.table["y"].to_numpy(np.int64))
    torch.manual_seed(seed)
    model = Classifier(build_backbone(hp.get("backbone", "auto"), bundle.input_shape, bundle.kind), bundle.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    bs, epochs = hp["batch_size"], hp["epochs"]
    steps = -(-len(train) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    if bundle.kind == "image":
        mean = torch.tensor(bundle.mean).view(1, -1, 1, 1) * 255
        std = torch.tensor(bundle.std).view(1, -1, 1, 1) * 255
    gen = torch.Generator().manual_seed(seed)
    seen, start = 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            xb = x[idx]
            if bundle.kind == "image":
                xb = (xb.float() - mean) / std
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    cases = [
        ("adult", "sex", {"epochs": 3, "batch_size": 128}),
        ("digits-shift", "style", {"epochs": 3, "batch_size": 64, "backbone": "cnn"}),
    ]
    rows = ["| dataset | model | batch | noharm trial (samples/s) | bare loop (samples/s) | ratio |", "|---|---|---|---|---|---|"]
    for dataset, attribute, hp in cases:
        ours, bare = [], []
        for r in range(args.repeats):
            # Alternate so drift in machine load hits both sides alike; keep the best of each.
            res = run_trial(TrialConfig(dataset=dataset, attribute=attribute, method="erm", seed=0, hparams=hp), device="cpu")
            ours.append(res.cost["train_samples_per_second"])
            bare.append(bare_loop(dataset, hp))
        o, b = max(ours), max(bare)
        model = hp.get("backbone", "mlp" if dataset == "adult" else "resnet18")
        rows.append(f"| {dataset} | {model} | {hp['batch_size']} | {o:,.0f} | {b:,.0f} | {o / b:.3f} |")
        print(rows[-1])
    append_results("trial_overhead.py: noharm trial vs bare PyTorch training loop",
                   "Best of %d runs each, fp32, CPU, training steps only (validation excluded on both sides).\n\n" % args.repeats
                   + "\n".join(rows))


if __name__ == "__main__":
    main()
