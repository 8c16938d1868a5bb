"""Fair supervised contrastive learning (Park et al., 2022).

A projection head maps the backbone's features to unit-norm embeddings e. For
an anchor i, the positives are the same-class samples of *other* groups,
P(i) = {p : y_p = y_i, g_p != g_i}, and the negatives are the other-class
samples of the anchor's *own* group, N(i) = {k : y_k != y_i, g_k = g_i}:

    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(e_i.e_p / t) / (exp(e_i.e_p / t) + sum_{k in N(i)} exp(e_i.e_k / t)) )

averaged over the anchors that have a positive. Pulling classes together
across groups, and pushing classes apart only within a group, leaves the
group nothing to separate. (Each positive's own term sits in its denominator,
the InfoNCE form, so l_i >= 0 and stays defined when N(i) is empty.)

The paper trains the encoder with this loss alone and then fits a linear
classifier on the frozen features. Here both run in one pass: with
`linear_probe` on (default) the head's cross-entropy sees detached features,
so the encoder learns from the contrastive loss only; off, the cross-entropy
also trains the encoder. One view per sample (the batch's own augmentation):
positives come from the other samples of the batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from methods import register_method
from methods.base import TaskData
from methods.batches import Batch
from methods.hparams import Bool, Int, LogFloat
from methods.training import TRAINING_HPARAMS, TorchMethod


def fair_supcon_loss(embeddings: torch.Tensor, y: torch.Tensor, group: torch.Tensor, temperature: float) -> torch.Tensor:
    """The fair supervised contrastive loss of unit-norm `embeddings` [B, D] (0 when no anchor has a positive)."""
    sim = embeddings @ embeddings.T / temperature
    same_y = y[:, None] == y[None, :]
    same_g = group[:, None] == group[None, :]
    positive = same_y & ~same_g  # never the anchor itself: it shares its own group
    negative = ~same_y & same_g
    # log sum_{k in N(i)} exp(sim_ik), -inf when N(i) is empty.
    neg_lse = torch.logsumexp(sim.masked_fill(~negative, -torch.inf), dim=1, keepdim=True)
    # log( e^s_ip / (e^s_ip + sum_N e^s_ik) ) = s_ip - logaddexp(s_ip, neg_lse_i)
    log_prob = sim - torch.logaddexp(sim, neg_lse.expand_as(sim))
    n_pos = positive.sum(1)
    per_anchor = -(log_prob * positive).sum(1) / n_pos.clamp_min(1)
    has_pos = (n_pos > 0).to(per_anchor.dtype)
    return (per_anchor * has_pos).sum() / has_pos.sum().clamp_min(1)


class FSCLModel(nn.Module):
    """Backbone, linear head, and the MLP projection head used only by the contrastive loss."""

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)
        d = backbone.out_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@register_method("fscl")
class FSCL(TorchMethod):
    description = ("Fair supervised contrastive loss (positives: same class, other group; negatives: other class, "
                   "own group) with a linear head on the features")
    paper = "Park et al. (2022), Fair contrastive learning for facial attribute classification (CVPR)"
    hparams = {
        **TRAINING_HPARAMS,
        "temperature": LogFloat(0.1, low=0.05, high=0.5),
        "con_weight": LogFloat(1.0, low=0.1, high=10.0),
        "proj_dim": Int(128, low=16, high=1024, search=False),
        "linear_probe": Bool(True),
    }

    def build_model(self, task: TaskData) -> nn.Module:
        return FSCLModel(self.build_backbone(task), task.num_classes, self.hp["proj_dim"])

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        features = model.backbone(batch.x)
        emb = F.normalize(model.projection(features).float(), dim=1)
        con = fair_supcon_loss(emb, batch.y, batch.group, self.hp["temperature"])
        head_in = features.detach() if self.hp["linear_probe"] else features
        return self.hp["con_weight"] * con + F.cross_entropy(model.head(head_in), batch.y)
