"""Group-balanced resampling: every epoch draws train rows so each group (or group x label cell) is equally likely.

Rows are drawn with replacement, with probability inverse to the size of
their cell, as many per epoch as the train split has; the loss is plain
cross-entropy. Small groups are therefore seen repeatedly, large ones
subsampled. Idrissi et al.'s RWG samples this way with their groups being
label x attribute cells: that is `balance=group_label`. The default
(`balance=group`) balances the attribute's groups only, which no method of
that paper does (NH-Fair's `resample` offers it as `resample_mode=group`).
"""

from __future__ import annotations

import numpy as np
import torch

from noharm.methods import register_method
from noharm.methods.base import FitContext, TaskData
from noharm.methods.provenance import Provenance
from noharm.methods.sampling import BALANCE_HPARAM, balanced_draw, cell_ids, inverse_frequency_weights
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


@register_method("resample")
class Resample(Provenance, TorchMethod):
    description = "Group-balanced resampling: rows drawn with probability inverse to their group's (or group x label's) frequency"
    paper = "Idrissi et al. (2022), Simple data balancing achieves competitive worst-group-accuracy (CLeaR)"
    reference = ("the paper's RWG definition; osu-srml/NH-Fair configs/sweep/resample.yaml (resample_mode group or "
                 "balanced)")
    departures = (
        "default balance=group balances the attribute's groups only; Idrissi et al.'s RWG balances "
        "label x attribute cells (balance=group_label)",
    )
    hparams = {**TRAINING_HPARAMS, "balance": BALANCE_HPARAM}

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        train = task.indices("train")
        self.train_rows = train
        self.row_weights = inverse_frequency_weights(
            cell_ids(task.group[train], task.y[train], task.num_classes, self.hp["balance"]))

    def train_indices(self, task: TaskData, epoch: int, generator: torch.Generator) -> np.ndarray:
        # Already in random order: no further shuffle needed.
        return balanced_draw(self.train_rows, self.row_weights, generator)
