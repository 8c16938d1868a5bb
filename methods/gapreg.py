"""Gap regularisation: cross-entropy plus a penalty on the gap between the groups' mean losses.

Per batch, with L_g the mean cross-entropy of group g's rows,

    loss = mean cross-entropy + gap_weight * (max_g L_g - min_g L_g)

over the groups present in the batch (with two groups, |L_0 - L_1|). The
penalty pulls the best-served group's loss up as much as the worst one's
down; that is the trade-off the no-harm comparison measures.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from methods import register_method
from methods.base import FitContext, TaskData
from methods.batches import Batch
from methods.groupdro import group_mean_losses
from methods.hparams import LogFloat
from methods.training import TRAINING_HPARAMS, TorchMethod


def loss_gap(losses: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """max - min of the per-group mean losses over the groups present (0 when fewer than two are)."""
    means, present = group_mean_losses(losses, group, n_groups)
    # Masked max/min instead of boolean indexing: no host sync; one group present gives max == min.
    largest = torch.where(present, means, torch.full_like(means, -torch.inf)).max()
    smallest = torch.where(present, means, torch.full_like(means, torch.inf)).min()
    return largest - smallest


@register_method("gapreg")
class GapReg(TorchMethod):
    description = "Gap regularisation: cross-entropy + gap_weight * (largest - smallest group mean loss in the batch)"
    paper = "Loss-gap form of the gap regulariser used as a baseline by Chuang & Mroueh (2021), Fair Mixup (ICLR)"
    hparams = {**TRAINING_HPARAMS, "gap_weight": LogFloat(1.0, low=0.01, high=10.0)}

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        self.n_groups = task.n_groups

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        return ce.mean() + self.hp["gap_weight"] * loss_gap(ce, batch.group, self.n_groups)
