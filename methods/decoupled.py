"""Decoupled heads: one shared backbone, one linear head per group, each trained on its group only.

Every sample's loss goes through its own group's head (routed by the true
group), and each group's mean loss counts once, so small groups weigh as much
as large ones in the head-specific part of the objective.

Departure from peers: the loss is the *sum over groups* of each group's mean
cross-entropy; Wang et al.'s domain-independent training as NH-Fair runs it
(methods/cv/decoupled.py) takes the mean over samples of the routed
cross-entropy (large groups weigh more). Inference routes by the true group,
as NH-Fair's does (the paper's sum of every head's logits for an unknown
group is not offered).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import TaskData
from noharm.methods.batches import Batch
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


class GroupHeads(nn.Module):
    """G linear heads as one batched layer: features [B, D] -> logits [B, G, C]."""

    def __init__(self, in_dim: int, n_groups: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_groups, num_classes, in_dim))
        self.bias = nn.Parameter(torch.empty(n_groups, num_classes))
        # Same initial distribution as each head being its own nn.Linear.
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,gcd->bgc", features, self.weight) + self.bias


def route(logits: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Each sample's own group's logits: [B, G, C] -> [B, C]."""
    return logits[torch.arange(len(group), device=logits.device), group]


def per_group_cross_entropy(logits: torch.Tensor, y: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Sum over the groups present of the mean cross-entropy of the group's samples through its own head.

    `logits` [B, G, C], `y` and `group` [B].
    """
    ce = F.cross_entropy(route(logits, group), y, reduction="none")
    n_groups = logits.shape[1]
    sums = torch.zeros(n_groups, dtype=ce.dtype, device=ce.device).index_add(0, group, ce)
    counts = torch.bincount(group, minlength=n_groups)
    # Absent groups have a zero sum; clamping their count avoids 0/0 without a device sync.
    return (sums / counts.clamp_min(1)).sum()


class DecoupledModel(nn.Module):
    """Shared features, per-group heads; `forward` returns every head's logits [B, G, C]."""

    def __init__(self, backbone: nn.Module, n_groups: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.heads = GroupHeads(backbone.out_dim, n_groups, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x))


@register_method("decoupled")
class Decoupled(TorchMethod):
    description = "Shared backbone with one linear head per group (per-group cross-entropy), routed by the true group"
    paper = "Wang et al. (2020), Towards fairness in visual recognition: domain-independent training (CVPR)"
    hparams = {**TRAINING_HPARAMS}
    candidates = ("experts",)
    expert_candidate = "experts"

    def build_model(self, task: TaskData) -> nn.Module:
        return DecoupledModel(self.build_backbone(task), task.n_groups, task.num_classes)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return per_group_cross_entropy(model(batch.x), batch.y, batch.group)

    def infer(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return {"experts": route(model(batch.x), batch.group)}
