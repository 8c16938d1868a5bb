"""Fair Identity Normalization (Luo et al., 2024, the Harvard-GF paper): per-group learnable normalisation of features.

Between the backbone and the head, each group g has its own learnable mean
mu_g and scale sigma_g = softplus(tau_g) + eps (one value per feature), and a
sample's features z are normalised with its own group's:

    z' = momentum * z + (1 - momentum) * (z - mu_g) / sigma_g

The momentum blends the raw features back in. As in the reference
(Harvard-GF `train_glaucoma_fair_fin.py` and `src/modules.py`): momentum 0.3,
mu_g drawn from N(0, 0.01^2), tau_g from N(0, 1) (so sigma_g starts around
softplus(0) = 0.69, not 1), eps 1e-6. The head is shared; the group is read
from the batch at inference too (routing by the true group, as the reference
does on its test set).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Float
from noharm.methods.provenance import Provenance
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod

# The reference's initialisation scales (its --fin_mu and --fin_sigma defaults).
INIT_MU_STD = 0.01
INIT_TAU_STD = 1.0


class FairIdentityNorm(nn.Module):
    """Per-group learnable mean and scale for features [B, D], selected by each row's group."""

    def __init__(self, n_groups: int, dim: int, momentum: float, eps: float = 1e-6):
        super().__init__()
        # Random per-group starts (drawn from the global torch RNG, which the trial seeds).
        self.mu = nn.Parameter(torch.randn(n_groups, dim) * INIT_MU_STD)
        self.tau = nn.Parameter(torch.randn(n_groups, dim) * INIT_TAU_STD)
        self.momentum = momentum
        self.eps = eps

    def sigma(self) -> torch.Tensor:
        return F.softplus(self.tau) + self.eps

    def forward(self, z: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        normalised = (z - self.mu[group]) / self.sigma()[group]
        return self.momentum * z + (1.0 - self.momentum) * normalised


class FINModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, n_groups: int, momentum: float):
        super().__init__()
        self.backbone = backbone
        self.norm = FairIdentityNorm(n_groups, backbone.out_dim, momentum)
        self.head = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.backbone(x), group))


@register_method("fin")
class FIN(Provenance, TorchMethod):
    description = "Fair Identity Normalization: features normalised by the row's own group's learnable mean and scale, shared head"
    paper = ("Luo et al. (2024), Harvard Glaucoma Fairness: a retinal nerve disease dataset for fairness learning "
             "and fair identity normalization, IEEE TMI 43(7):2623-2633")
    reference = "Harvard-Ophthalmology-AI-Lab/Harvard-GF train_glaucoma_fair_fin.py, src/modules.py (Fair_Identity_Normalizer)"
    departures = (
        "the head keeps a bias and the loss is softmax cross-entropy over C classes; the reference's final layer "
        "has no bias and trains one logit with BCE (same model class for binary labels, one more parameter)",
        "training uses the shared loop (AdamW with default betas, cosine schedule); the reference uses AdamW "
        "with betas (0, 0.1), lr 0.05 and a step schedule, which the searched settings can approach but not match",
    )
    hparams = {
        **TRAINING_HPARAMS,
        "momentum": Float(0.3, low=0.0, high=0.9),  # weight of the raw features in the blend; the reference's 0.3
    }

    def build_model(self, task: TaskData) -> nn.Module:
        return FINModel(self.build_backbone(task), task.num_classes, task.n_groups, self.hp["momentum"])

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch.x, batch.group), batch.y)

    def infer(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return {"model": model(batch.x, batch.group)}
