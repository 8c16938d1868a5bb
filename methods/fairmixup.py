"""Fair Mixup (Chuang & Mroueh, 2021): a smoothness penalty on the model's output along paths between groups.

For each pair of groups (a, b) in the batch, rows of a are paired with rows of
b (and, for `fairness="eo"`, only rows of the same label are paired, as in
the paper's equalized-odds version). With one t ~ Beta(mix_alpha, mix_alpha)
per batch, the mixed inputs are x_t = t * x_a + (1 - t) * x_b and the penalty
is the paper's

    | d/dt mean over the pairs of f(x_t) |,

f the predicted class probabilities (mean of the absolute derivative over
classes, which for two classes is exactly the paper's |d/dt E f|), averaged
over the group pairs (and labels). A model whose expected output does not
change along the path between the groups (demographic parity, or equalized
odds within a label, for every t) pays nothing.

The paths run through the inputs (the paper's tabular experiments; the
derivative in t is exact, one reverse pass per group pair and class beyond
the first) or, with `mix_at="features"` (default for images), through the
backbone's features before the linear head, the paper's manifold variant,
where the derivative has a closed form. The supervised loss is the plain
cross-entropy of the batch.

Departures from the reference (chingyaoc/fair-mixup): pairs are formed
within the ordinary shuffled batch (the reference draws a separate, equally
sized batch per group, and per group x label for EO); the manifold variant
mixes right before the model's linear head (the reference's CelebA head is
two layers, mixed before the first); the reference's scalar output (one
sigmoid) becomes the mean over classes of |d/dt E p_c|, identical for two
classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import FitContext, TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Choice, Float, LogFloat
from noharm.methods.provenance import Provenance
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


def cross_group_pairs(group: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row pairs between different groups: (rows of a, rows of b, pair-set id).

    For every pair of groups a < b present (and, when `y` is given, every label
    both have), the first m rows of a are paired with the first m rows of b,
    m the smaller count; batches arrive shuffled, so "first" is a random draw.
    Every pair set gets its own id (0, 1, ...).
    """
    device = group.device
    g_np = group.cpu().numpy()
    y_np = None if y is None else y.cpu().numpy()
    labels = [None] if y_np is None else np.unique(y_np)
    left, right, ids = [], [], []
    set_id = 0
    for label in labels:
        in_label = np.ones(len(g_np), bool) if label is None else y_np == label
        present = np.unique(g_np[in_label])
        for i, a in enumerate(present):
            rows_a = np.flatnonzero(in_label & (g_np == a))
            for b in present[i + 1:]:
                rows_b = np.flatnonzero(in_label & (g_np == b))
                m = min(len(rows_a), len(rows_b))
                left.append(rows_a[:m])
                right.append(rows_b[:m])
                ids.append(np.full(m, set_id))
                set_id += 1
    if not left:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty
    to = lambda parts: torch.from_numpy(np.concatenate(parts)).long().to(device)  # noqa: E731
    return to(left), to(right), to(ids)


def mixup_penalty(prob_fn, x_a: torch.Tensor, x_b: torch.Tensor, set_id: torch.Tensor, t: float) -> torch.Tensor:
    """Mean over pair sets and classes of |d/dt mean_{pairs in set} prob_fn(t x_a + (1 - t) x_b)|, at `t`.

    `prob_fn` maps inputs [M, ...] to probabilities [M, C]. The derivative is
    exact: one reverse pass per (pair set, class) through a scalar t shared
    by every row (rows may interact, e.g. through BatchNorm, so per-row input
    gradients would not be), and class 0's derivative is minus the sum of the
    others' because probabilities sum to one. Two groups and two classes: one pass.
    """
    if len(set_id) == 0:
        return x_a.sum() * 0.0
    tt = torch.tensor(float(t), device=x_a.device, dtype=x_a.dtype, requires_grad=True)
    probs = prob_fn(tt * x_a + (1 - tt) * x_b)
    means = set_means(probs, set_id)  # [S, C]
    n_sets, n_classes = means.shape
    rows = []
    for s in range(n_sets):
        rest = [torch.autograd.grad(means[s, c], tt, create_graph=True, retain_graph=True)[0] for c in range(1, n_classes)]
        rest = torch.stack(rest)
        rows.append(torch.cat([-rest.sum()[None], rest]))
    return torch.stack(rows).abs().mean()


def mixup_penalty_features(head: nn.Linear, h_a: torch.Tensor, h_b: torch.Tensor, set_id: torch.Tensor, t: float) -> torch.Tensor:
    """The same penalty with the mixing on features h before a linear head (manifold Fair Mixup), in closed form.

    With p = softmax(W h_t + b) and h_t = t h_a + (1 - t) h_b, the derivative
    is dp/dt = p * (v - <p, v>) for v = W (h_a - h_b): no higher-order autograd.
    """
    if len(set_id) == 0:
        return h_a.sum() * 0.0
    h_t = t * h_a + (1 - t) * h_b
    p = torch.softmax(head(h_t).float(), dim=1)
    v = ((h_a - h_b) @ head.weight.T).float()
    dp = p * (v - (p * v).sum(1, keepdim=True))
    return set_means(dp, set_id).abs().mean()


def set_means(values: torch.Tensor, set_id: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [M, C] within each pair set: [S, C]."""
    n_sets = int(set_id.max()) + 1
    sums = torch.zeros(n_sets, values.shape[1], dtype=values.dtype, device=values.device).index_add(0, set_id, values)
    counts = torch.bincount(set_id, minlength=n_sets).to(values.dtype)
    return sums / counts[:, None]


@register_method("fairmixup")
class FairMixup(Provenance, TorchMethod):
    description = ("Fair Mixup: cross-entropy + lam * |d/dt E f(t x_a + (1-t) x_b)| on mixup paths between groups "
                   "(DP, or EO within labels); inputs mixed for tabular data, features for images")
    paper = "Chuang & Mroueh (2021), Fair Mixup: fairness via interpolation (ICLR)"
    reference = "chingyaoc/fair-mixup adult/utils.py (train_dp, train_eo), celeba/main_dp.py, celeba/main_eo.py"
    departures = (
        "pairs are formed within the ordinary shuffled batch (as many pairs as the smaller group has rows); "
        "the reference draws a separate, equally sized batch per group (per group x label for EO)",
        "manifold mixing happens right before the linear head; the reference's CelebA head has two layers",
        "more than two classes: mean over classes of the absolute derivative of E p_c "
        "(the reference has one sigmoid output)",
    )
    hparams = {
        **TRAINING_HPARAMS,
        "lam": LogFloat(1.0, low=0.01, high=10.0),
        "fairness": Choice("dp", choices=("dp", "eo"), search=False),
        "mix_alpha": Float(1.0, low=0.1, high=2.0, search=False),  # Beta(alpha, alpha) for t; the paper uses 1
        # Where the paths run: inputs (the paper's tabular runs) or the features before the head
        # (its "manifold" image runs; cheap in closed form). auto: inputs for tabular, features for images.
        "mix_at": Choice("auto", choices=("auto", "input", "features"), search=False),
    }

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        # t comes from the method's own seeded stream: same numbers on any device.
        self.rng = np.random.default_rng(ctx.seed)
        mix_at = self.hp["mix_at"]
        self.mix_features = mix_at == "features" or (mix_at == "auto" and task.kind == "image")

    def draw_t(self) -> float:
        """t ~ Beta(mix_alpha, mix_alpha), one per batch as in the paper."""
        return float(self.rng.beta(self.hp["mix_alpha"], self.hp["mix_alpha"]))

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        left, right, set_id = cross_group_pairs(batch.group, batch.y if self.hp["fairness"] == "eo" else None)
        t = self.draw_t()
        if self.mix_features:
            features = model.backbone(batch.x)
            ce = F.cross_entropy(model.head(features), batch.y)
            penalty = mixup_penalty_features(model.head, features[left], features[right], set_id, t)
        else:
            ce = F.cross_entropy(model(batch.x), batch.y)
            penalty = mixup_penalty(lambda x: torch.softmax(model(x).float(), dim=1), batch.x[left], batch.x[right], set_id, t)
        return ce + self.hp["lam"] * penalty
