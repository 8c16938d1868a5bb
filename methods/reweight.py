"""Group-balanced loss weights: each row's cross-entropy is weighted inverse to its group's (or group x label's) frequency.

Weights are computed once on the train split and rescaled to mean 1, so every
present cell carries the same total weight and the loss keeps ERM's scale;
batches are drawn as in ERM. Same balance as `resample` in expectation, with
the weights in the loss instead of in the sampler. Idrissi et al. define
their groups as label x attribute cells (`balance=group_label`); the default
balances the attribute's groups only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import FitContext, TaskData
from noharm.methods.batches import Batch
from noharm.methods.provenance import Provenance
from noharm.methods.sampling import BALANCE_HPARAM, cell_ids, inverse_frequency_weights
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


@register_method("reweight")
class Reweight(Provenance, TorchMethod):
    description = "Group-balanced loss weights: cross-entropy weighted inverse to the group's (or group x label's) train frequency"
    paper = "Idrissi et al. (2022), Simple data balancing achieves competitive worst-group-accuracy (CLeaR)"
    reference = "the paper's definitions (group-weighted loss); no reference code read"
    departures = (
        "default balance=group weights the attribute's groups only; the paper's groups are label x attribute "
        "cells (balance=group_label)",
        "weights are rescaled to mean 1 over the train rows, so the loss keeps ERM's scale (a constant factor "
        "that only changes the effective learning rate against unnormalised weights)",
    )
    hparams = {**TRAINING_HPARAMS, "balance": BALANCE_HPARAM}

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        train = task.indices("train")
        weights = torch.zeros(len(task.y), dtype=torch.float32)
        weights[torch.from_numpy(train)] = torch.from_numpy(inverse_frequency_weights(
            cell_ids(task.group[train], task.y[train], task.num_classes, self.hp["balance"]))).float()
        # Indexed by row position (batch.index); val/test rows keep weight 0 and never train.
        self.row_weights = weights.to(ctx.device)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        return (self.row_weights[batch.index] * ce).mean()
