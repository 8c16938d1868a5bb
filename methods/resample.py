"""Group-balanced resampling: every epoch draws train rows so each group (or group x label cell) is equally likely.

Rows are drawn with replacement, with probability inverse to the size of
their cell, as many per epoch as the train split has; the loss is plain
cross-entropy. Small groups are therefore seen repeatedly, large ones
subsampled; this is how Idrissi et al. implement RWG (group) and, with
`balance=group_label`, balance group x label cells.
"""

from __future__ import annotations

import numpy as np
import torch

from methods import register_method
from methods.base import FitContext, TaskData
from methods.sampling import BALANCE_HPARAM, balanced_draw, cell_ids, inverse_frequency_weights
from methods.training import TRAINING_HPARAMS, TorchMethod


@register_method("resample")
class Resample(TorchMethod):
    description = "Group-balanced resampling: rows drawn with probability inverse to their group's (or group x label's) frequency"
    paper = "Idrissi et al. (2022), Simple data balancing achieves competitive worst-group-accuracy (CLeaR)"
    hparams = {**TRAINING_HPARAMS, "balance": BALANCE_HPARAM}

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        train = task.indices("train")
        self.train_rows = train
        self.row_weights = inverse_frequency_weights(
            cell_ids(task.group[train], task.y[train], task.num_classes, self.hp["balance"]))

    def train_indices(self, task: TaskData, epoch: int, generator: torch.Generator) -> np.ndarray:
        # Already in random order: no further shuffle needed.
        return balanced_draw(self.train_rows, self.row_weights, generator)
