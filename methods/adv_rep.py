"""Adversarial representation: a group discriminator trained through gradient reversal.

The discriminator learns to predict the group from the backbone's features;
the reversal layer between them sends its gradient back to the backbone with
the opposite sign, scaled by `adv_weight`, so the features are pushed to hide
the group while the head still predicts the label (domain-adversarial training
with groups as domains).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import TaskData
from noharm.methods.batches import Batch
from noharm.methods.gradient_reversal import GradientReversal
from noharm.methods.hparams import Bool, Int, LogFloat
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


def ramp(progress: float, gamma: float = 10.0) -> float:
    """2 / (1 + exp(-gamma * progress)) - 1: 0 at the start of training, close to 1 at the end."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class AdversarialRepModel(nn.Module):
    """Backbone, label head, and a group discriminator behind a gradient-reversal layer."""

    def __init__(self, backbone: nn.Module, num_classes: int, n_groups: int, weight: float, hidden: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)
        self.reversal = GradientReversal(weight)
        self.discriminator = nn.Sequential(nn.Linear(backbone.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(label logits, group logits) from one backbone pass."""
        features = self.backbone(x)
        return self.head(features), self.discriminator(self.reversal(features))


@register_method("adv-rep")
class AdversarialRepresentation(TorchMethod):
    description = "Domain-adversarial training: a group discriminator on the features, trained through gradient reversal"
    paper = "Ganin et al. (2016), Domain-adversarial training of neural networks (JMLR); Edwards & Storkey (2016)"
    hparams = {
        **TRAINING_HPARAMS,
        "adv_weight": LogFloat(1.0, low=0.01, high=10.0),
        "disc_hidden": Int(128, low=8, high=1024, search=False),
        # Ganin et al.'s schedule: the reversal weight rises from 0 to adv_weight over training.
        "adv_ramp": Bool(False),
    }

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        model.reversal.weight = self.hp["adv_weight"] * (ramp(epoch / self.hp["epochs"]) if self.hp["adv_ramp"] else 1.0)

    def build_model(self, task: TaskData) -> nn.Module:
        return AdversarialRepModel(self.build_backbone(task), task.num_classes, task.n_groups,
                                   self.hp["adv_weight"], self.hp["disc_hidden"])

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        # The discriminator minimises its loss; through the reversal the backbone maximises it.
        logits, group_logits = model.both(batch.x)
        return F.cross_entropy(logits, batch.y) + F.cross_entropy(group_logits, batch.group)
