"""Group DRO (Sagawa et al., 2020): minimise a weighted sum of group losses whose weights chase the worst group.

Per batch, each group's mean loss L_g (plus the optional generalisation
adjustment C / sqrt(n_g) from the paper, n_g the group's train size) updates
the group weights by exponentiated gradient ascent,

    q_g <- q_g * exp(eta * L_g),   q <- q / sum(q),

and the model descends sum_g q_g L_g. Groups absent from a batch keep their
weight before the renormalisation (their loss counts as 0), as in the paper's
online algorithm (and its `LossComputer`). The paper pairs this with strong L2
regularisation, hence the wide weight-decay range.

DRO groups: the sensitive attribute's groups (`groups=group`, default; what
NH-Fair's groupdro uses) or, as Sagawa et al. and SubpopBench define them,
label x attribute cells (`groups=group_label`): then q has one weight per
(group, label) cell present in train.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import FitContext, TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Choice, Float, LogFloat
from noharm.methods.provenance import Provenance
from noharm.methods.sampling import BALANCE, cell_ids
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


def group_mean_losses(losses: torch.Tensor, group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss of each group in the batch, 0 where absent; which groups are present)."""
    sums = torch.zeros(n_groups, dtype=losses.dtype, device=losses.device).index_add(0, group, losses)
    counts = torch.bincount(group, minlength=n_groups).to(losses.dtype)
    return sums / counts.clamp_min(1), counts > 0


def update_group_weights(q: torch.Tensor, group_losses: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step: q * exp(eta * losses), renormalised.

    Computed in log space, so large losses cannot overflow.
    """
    logits = torch.log(q) + eta * group_losses.detach().to(q.dtype)
    return torch.softmax(logits, dim=0)


@register_method("groupdro")
class GroupDRO(Provenance, TorchMethod):
    description = ("Group DRO: online group weights q_g <- q_g exp(eta L_g) that up-weight the worst group's loss "
                   "(groups: the attribute, or label x attribute)")
    paper = "Sagawa et al. (2020), Distributionally robust neural networks for group shifts (ICLR)"
    reference = ("kohpangwei/group_DRO loss.py (LossComputer), as in osu-srml/NH-Fair methods/cv/groupdro.py "
                 "and SubpopBench's GroupDRO")
    departures = (
        "default DRO groups are the attribute's groups (NH-Fair's choice); Sagawa et al. and SubpopBench use "
        "label x attribute cells: groups=group_label",
        "the optimiser is the shared AdamW (decoupled weight decay) or SGD; the paper uses SGD with coupled L2, "
        "which optimizer=sgd gives",
    )
    hparams = {
        **TRAINING_HPARAMS,
        # The paper's strong L2 penalty (up to 1 for ResNets) is part of the method.
        "weight_decay": LogFloat(1e-4, low=1e-5, high=1.0),
        "eta": LogFloat(1e-2, low=1e-3, high=1e-1),
        "adjustment": Float(0.0, low=0.0, high=5.0, search=False),  # C in C / sqrt(n_g); the paper tries 0..5
        "groups": Choice("group", choices=BALANCE, search=False),  # DRO groups: attribute, or label x attribute
    }

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        self.num_classes = task.num_classes
        n_cells = task.n_groups * (task.num_classes if self.hp["groups"] == "group_label" else 1)
        train = task.indices("train")
        cells = cell_ids(task.group[train], task.y[train], task.num_classes, self.hp["groups"])
        counts = torch.bincount(torch.from_numpy(cells), minlength=n_cells).double()
        self.adjust = (self.hp["adjustment"] / counts.clamp_min(1).sqrt()).float().to(ctx.device)
        self.q = torch.full((n_cells,), 1.0 / n_cells, device=ctx.device)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        cell = batch.group * self.num_classes + batch.y if self.hp["groups"] == "group_label" else batch.group
        losses, present = group_mean_losses(ce, cell, len(self.q))
        adjusted = torch.where(present, losses + self.adjust.to(losses.dtype), torch.zeros_like(losses))
        self.q = update_group_weights(self.q, adjusted, self.hp["eta"])
        # The adjustment only steers q: it is constant in the model's parameters.
        return (self.q.to(losses.dtype) * losses).sum()
