"""FairSDE's diversity loss, vectorised vs a per-sample loop; and no-harm selection time for 2 to 1,024 groups.

Run by hand: `.venv/bin/python bench/perf/fairsde_losses.py`. Appends to bench/perf/RESULTS.md.

1. L_div of one training step (batch 256): pair sampling + loss + backward, with
   `methods.fairsde.losses` against a per-sample Python loop of the same formula
   (the way the authors' release computes it). The script first checks that both
   give the same value (both `center_negatives` variants, same pairs), then
   reports the time ratio. Goal: the vectorised step is many times faster.
2. `methods.selection.select` per call for G in 2, 8, 64, 256, 1024 random
   groups, for each strategy. Goal: the exact IPs stay under 1 s at 1,024 groups.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from noharm.bench.perf.common import append_results
from noharm.methods.fairsde.losses import diversity_loss, sample_pairs

SELECTION_GROUPS = (2, 8, 64, 256, 1024)
SELECTION_STRATEGIES = ("greedy", "ip-gap", "ip-utility")


# ---------------------------------------------------------------- the per-sample reference


def loop_pairs(y: torch.Tensor, a: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """p(i) and n(i) drawn one sample at a time (same distribution as `sample_pairs`)."""
    yl, al = y.tolist(), a.tolist()
    pos, neg = [], []
    for i in range(len(yl)):
        mates = [j for j in range(len(yl)) if j != i and yl[j] == yl[i] and al[j] == al[i]]
        others = [j for j in range(len(yl)) if yl[j] == yl[i] and al[j] != al[i]]
        pos.append(rng.choice(mates) if mates else i)
        neg.append(rng.choice(others) if others else -1)
    return torch.tensor(pos), torch.tensor(neg)


def loop_diversity(z, cos_sim, y, a, pos, neg, tau: float, center_negatives: str) -> torch.Tensor:
    """The issue's L_div written directly, one sample per iteration (autograd-capable)."""
    b, g, c = cos_sim.shape
    terms = []
    for i in range(b):
        ai, yi = int(a[i]), int(y[i])
        num = torch.exp(z[i] @ z[int(pos[i])] / tau) + torch.exp(cos_sim[i, ai, yi] / tau)
        mask = torch.ones(g, c, dtype=torch.bool)
        mask[ai, yi] = False
        others = cos_sim[i][mask]
        n_i = torch.exp(others / tau).sum() if center_negatives == "scaled" else torch.exp(others).sum() / tau
        den = n_i + (torch.exp(z[i] @ z[int(neg[i])] / tau) if int(neg[i]) >= 0 else 0.0)
        terms.append(-torch.log(num / den))
    return torch.stack(terms).mean()


# ---------------------------------------------------------------- L_div timing


def make_inputs(batch: int, groups: int, classes: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=gen).relu()  # post-ReLU features, as the backbones give
    centers = torch.randn(groups, classes, dim, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)
    a = torch.randint(0, groups, (batch,), generator=gen)
    return features, centers, y, a


def forward(features, centers):
    f = features.clone().requires_grad_(True)
    v = centers.clone().requires_grad_(True)
    z = F.normalize(f, dim=1)
    cos_sim = torch.einsum("bd,gcd->bgc", z, F.normalize(v, dim=2))
    return f, v, z, cos_sim


def check_same_value(features, centers, y, a, tau: float) -> list[str]:
    """Both implementations on the same pairs: value and gradient agree (raises otherwise)."""
    lines = []
    pos, neg = sample_pairs(y, a, torch.Generator().manual_seed(1))
    for variant in ("scaled", "reference"):
        f1, v1, z1, c1 = forward(features, centers)
        fast = diversity_loss(z1, c1, y, a, pos, neg, tau=tau, center_negatives=variant)
        fast.backward()
        f2, v2, z2, c2 = forward(features, centers)
        slow = loop_diversity(z2, c2, y, a, pos, neg, tau, variant)
        slow.backward()
        if not (math.isclose(fast.item(), slow.item(), rel_tol=1e-5, abs_tol=1e-5)
                and torch.allclose(f1.grad, f2.grad, atol=1e-6) and torch.allclose(v1.grad, v2.grad, atol=1e-6)):
            raise SystemExit(f"mismatch ({variant}): vectorised {fast.item()} vs loop {slow.item()}")
        lines.append(f"{variant}: vectorised {fast.item():.6f}, loop {slow.item():.6f}; gradients equal")
    return lines


def fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


def time_step(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_diversity(batch: int, groups: int, classes: int, dim: int, tau: float, repeats: int) -> tuple[str, float]:
    features, centers, y, a = make_inputs(batch, groups, classes, dim)
    checks = check_same_value(features, centers, y, a, tau)
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    fixed_pos, fixed_neg = sample_pairs(y, a, torch.Generator().manual_seed(2))

    def loss_only(fn):
        def run():
            _, _, z, cos_sim = forward(features, centers)
            fn(z, cos_sim, y, a, fixed_pos, fixed_neg, tau, "scaled").backward()
        return run

    steps = {
        "vectorised": {
            "pairs": lambda: sample_pairs(y, a, gen),
            "loss": loss_only(diversity_loss),
        },
        "loop": {
            "pairs": lambda: loop_pairs(y, a, rng),
            "loss": loss_only(loop_diversity),
        },
    }
    steps["vectorised"]["total"] = lambda: (steps["vectorised"]["pairs"](), steps["vectorised"]["loss"]())
    steps["loop"]["total"] = lambda: (steps["loop"]["pairs"](), steps["loop"]["loss"]())
    best = {(impl, part): math.inf for impl in steps for part in ("pairs", "loss", "total")}
    # Alternate so load drift hits both alike; keep the best of each.
    for _ in range(repeats):
        for impl, parts in steps.items():
            for part, fn in parts.items():
                best[impl, part] = min(best[impl, part], time_step(fn, 5 if impl == "vectorised" else 1))
    fast, slow = best["vectorised", "total"], best["loop", "total"]
    row = lambda impl: " | ".join(f"{best[impl, p] * 1e3:.2f}" for p in ("pairs", "loss", "total"))  # noqa: E731
    body = (f"L_div of one training step: pair sampling, then loss + backward, batch {batch}, {groups} groups, "
            f"{classes} classes, {dim}-d features, tau {tau}; best of {repeats} rounds.\n\n"
            "Same value first: " + "; ".join(checks) + ".\n\n"
            "| implementation | pairs (ms) | loss + backward (ms) | step (ms) |\n|---|---|---|---|\n"
            f"| vectorised (`methods.fairsde.losses`) | {row('vectorised')} |\n"
            f"| per-sample loop | {row('loop')} |\n\n"
            f"**Speed-up of the step (loop / vectorised): {slow / fast:.1f}x**")
    return body, slow / fast


# ---------------------------------------------------------------- selection timing


def bench_selection(repeats: int) -> tuple[str, float]:
    from noharm.methods.selection import select

    rng = np.random.default_rng(0)
    rows = ["| groups | " + " | ".join(SELECTION_STRATEGIES) + " |", "|---|" + "---|" * len(SELECTION_STRATEGIES)]
    worst_ip = 0.0
    for g in SELECTION_GROUPS:
        # ERM near 0.8; experts around it, so roughly half the groups could gain from their expert.
        erm = rng.uniform(0.6, 0.95, g)
        expert = np.clip(erm + rng.normal(0, 0.05, g), 0, 1)
        sizes = rng.integers(20, 2000, g)
        cells = []
        for strategy in SELECTION_STRATEGIES:
            seconds = time_step(lambda: select(expert, erm, sizes, strategy), repeats)
            status = select(expert, erm, sizes, strategy).status
            cells.append(f"{fmt_seconds(seconds)} ({status})")
            if strategy.startswith("ip") and g == max(SELECTION_GROUPS):
                worst_ip = max(worst_ip, seconds)
        rows.append(f"| {g} | " + " | ".join(cells) + " |")
        print(rows[-1])
    verdict = "PASS" if worst_ip < 1.0 else "FAIL"
    body = (f"`methods.selection.select`, time per call (best of {repeats}), random accuracies, metric accuracy. "
            f"Goal: exact IP < 1 s at 1,024 groups: {verdict} ({worst_ip:.3f} s).\n\n" + "\n".join(rows))
    return body, worst_ip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help="print only; do not write RESULTS.md")
    args = parser.parse_args()

    div_body, ratio = bench_diversity(args.batch, args.groups, args.classes, args.dim, 0.07, args.repeats)
    print(div_body)
    sel_body, worst = bench_selection(args.repeats)
    print(sel_body)
    if not args.no_append:
        append_results("fairsde_losses.py: FairSDE L_div (vectorised vs loop) and selection time",
                       f"torch threads: {torch.get_num_threads()}.\n\n{div_body}\n\n{sel_body}")


if __name__ == "__main__":
    main()
