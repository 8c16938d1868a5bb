"""Gap regularisation (GapReg, the baseline of Chuang & Mroueh, 2021): cross-entropy plus the gap in mean predicted probability.

With p the softmax output and, for a set of rows R, m_g(R, c) the mean of
p_c over group g's rows in R (groups with no row in R skipped), and
gap(v_g) = max_g v_g - min_g v_g over the groups present:

    dp:     max_c  gap( m_g(batch, c) )
    eopp:   gap( m_g({y = 1}, 1) )                      (binary labels only)
    eodds:  sum_c  gap( m_g({y = c}, c) )

    loss = mean cross-entropy + gap_weight * penalty

Batches follow fair-mixup: every group (every group x label cell for EOpp /
EOdds) is equally represented, so each group's mean, and the cross-entropy,
come from as many rows of each (`batches=balanced`; rows drawn with
replacement by inverse-frequency weights, equal per group in expectation).
`batches=shuffled` gives NH-Fair's ordinary batches, where a small group's
mean is estimated from few rows and its noise dominates that group's gradient.

For two groups and two classes these are exactly the reference's
|E[p | a=0] - E[p | a=1]| (DP), its y = 1 term (EOpp, NH-Fair's DiffEOpp) and
the sum over y of |E[p | a=0, y] - E[p | a=1, y]| (EO, fair-mixup's `train_eo`),
p the probability of class 1 (p_0 = 1 - p_1 gives the same gaps). With more
classes they are NH-Fair's multiclass DiffDP (largest class gap) and DiffEOdd.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import FitContext, TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Choice, HparamError, LogFloat
from noharm.methods.provenance import Provenance
from noharm.methods.sampling import balanced_draw, cell_ids, inverse_frequency_weights
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod

FAIRNESS = ("dp", "eopp", "eodds")


def group_mean_gap(values: torch.Tensor, group: torch.Tensor, rows: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per column of `values` [B, K]: max - min over groups of the mean over that group's `rows` (mask [B]).

    Groups without a row are skipped; fewer than two groups give 0 (no gap to close).
    """
    weight = rows.to(values.dtype)
    sums = torch.zeros(n_groups, values.shape[1], dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, group, values * weight[:, None])
    counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, group, weight)
    means = sums / counts.clamp_min(1)[:, None]
    present = (counts > 0)[:, None]
    largest = torch.where(present, means, torch.full_like(means, -torch.inf)).max(0).values
    smallest = torch.where(present, means, torch.full_like(means, torch.inf)).min(0).values
    # Masked max/min (no host sync); a single present group gives max == min.
    return torch.where(present.sum() >= 2, largest - smallest, torch.zeros_like(largest))


def probability_gap(proba: torch.Tensor, y: torch.Tensor, group: torch.Tensor, n_groups: int, fairness: str) -> torch.Tensor:
    """The GapReg penalty of softmax probabilities `proba` [B, C] (see the module docstring)."""
    everyone = torch.ones_like(y, dtype=torch.bool)
    if fairness == "dp":
        return group_mean_gap(proba, group, everyone, n_groups).max()
    if fairness == "eopp":
        return group_mean_gap(proba[:, 1:2], group, y == 1, n_groups)[0]
    if fairness == "eodds":
        return sum(group_mean_gap(proba[:, c:c + 1], group, y == c, n_groups)[0] for c in range(proba.shape[1]))
    raise HparamError(f"unknown fairness {fairness!r}; choose one of: {', '.join(FAIRNESS)}")


@register_method("gapreg")
class GapReg(Provenance, TorchMethod):
    description = ("GapReg: cross-entropy + gap_weight * gap between groups in mean predicted probability "
                   "(DP; or per label: EOpp, EOdds)")
    paper = "Chuang & Mroueh (2021), Fair Mixup: fairness via interpolation (ICLR), its GapReg baseline"
    reference = ("chingyaoc/fair-mixup adult/utils.py (train_dp, train_eo), celeba/main_eo.py; "
                 "osu-srml/NH-Fair methods/cv/gapreg.py (DiffDP, DiffEOpp, DiffEOdd)")
    departures = (
        "balanced batches are drawn with replacement by inverse-frequency weights (equal per group in "
        "expectation); fair-mixup draws exactly batch_size rows per group without replacement, for a fixed "
        "100 steps per epoch, and computes the penalty on separate forward passes of the group batches",
        "more than two groups: the gap is largest minus smallest group mean (the references handle two groups)",
        "default gap_weight 0.5 (fair-mixup's Adult default) searched in [0.01, 10]; fair-mixup uses 30 on "
        "CelebA EO, NH-Fair searches [0.01, 5]",
    )
    hparams = {
        **TRAINING_HPARAMS,
        "gap_weight": LogFloat(0.5, low=0.01, high=10.0),
        "fairness": Choice("dp", choices=FAIRNESS, search=False),
        # balanced: fair-mixup's group (x label for EO) balanced batches; shuffled: NH-Fair's ordinary batches.
        "batches": Choice("balanced", choices=("balanced", "shuffled"), search=False),
    }

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        if self.hp["fairness"] == "eopp" and task.num_classes != 2:
            raise HparamError(f"gapreg fairness 'eopp' needs a binary label (y = 1 is the positive outcome), this task "
                              f"has {task.num_classes} classes; use fairness=dp or eodds")
        self.n_groups = task.n_groups
        train = task.indices("train")
        self.train_rows = train
        # fair-mixup draws as many rows of every group (of every group x label cell for EO) per step.
        balance = "group" if self.hp["fairness"] == "dp" else "group_label"
        self.row_weights = inverse_frequency_weights(cell_ids(task.group[train], task.y[train], task.num_classes, balance))

    def train_indices(self, task: TaskData, epoch: int, generator: torch.Generator) -> np.ndarray:
        if self.hp["batches"] == "shuffled":
            return super().train_indices(task, epoch, generator)
        return balanced_draw(self.train_rows, self.row_weights, generator)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.x)
        proba = torch.softmax(logits.float(), dim=1)
        penalty = probability_gap(proba, batch.y, batch.group, self.n_groups, self.hp["fairness"])
        return F.cross_entropy(logits, batch.y) + self.hp["gap_weight"] * penalty
