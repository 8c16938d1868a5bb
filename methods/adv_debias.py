"""Adversarial debiasing (Zhang, Lemoine & Mitchell, 2018).

An adversary predicts the group from the predictor's output (form "dp",
demographic parity) or from the output and the label (form "eodds", equalized
odds). The adversary minimises its own cross-entropy with its own optimiser.
The predictor's update, per parameter tensor, is

    g - proj_h(g) - alpha * h

with g the gradient of the predictor's loss and h that of the adversary's
loss: the projection removes the part of g that would help the adversary, the
-alpha*h term moves against it.

The adversary takes `adv_steps` updates per predictor update (default 5, at a
higher learning rate than the predictor's): the method's argument assumes an
adversary close to its best response; a slow one is fooled (the predictor
encodes the group the other way round) rather than made blind.

Defaults differ from AIF360's `AdversarialDebiasing` (the implementation
most peers run): there alpha (adversary_loss_weight) is 0.1, the adversary
takes one step per predictor step with the predictor's learning rate, and
both learning rates decay exponentially. Here alpha is 1 and the adversary
takes 5 steps at its own rate, for the reason above; AIF360's values are one
`--set` away (alpha=0.1, adv_steps=1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from noharm.methods import register_method
from noharm.methods.base import FitContext, TaskData
from noharm.methods.batches import Batch
from noharm.methods.hparams import Choice, Int, LogFloat
from noharm.methods.provenance import Provenance
from noharm.methods.training import TRAINING_HPARAMS, Classifier, TorchMethod, autocast


def projected_update(grad_pred: torch.Tensor, grad_adv: torch.Tensor, alpha: float, eps: float = 1e-12) -> torch.Tensor:
    """Zhang et al.'s predictor update for one parameter: grad_pred minus its projection on grad_adv, minus alpha*grad_adv.

    With a (near-)zero adversary gradient there is nothing to project on and
    the update is grad_pred. Branch-free, so it never waits on the device.
    """
    g, h = grad_pred, grad_adv
    hh = torch.sum(h * h)
    coef = torch.where(hh > eps, torch.sum(g * h) / hh.clamp_min(eps), torch.zeros_like(hh))
    return g - coef * h - alpha * h


class Adversary(nn.Module):
    """Predicts the group from the predictor's logits (and the label, in the "eodds" form).

    As in the paper, it sees squashed scores s = softmax((1 + |c|) * logits)
    with a learnt sharpness c (the sigmoid of the binary case), so the
    predictor cannot fool it by inflating the scale of its outputs. In the
    "eodds" form it also sees s times the one-hot label (the paper's s*y and
    s*(1-y)), which carries the label itself since s sums to one.
    """

    def __init__(self, num_classes: int, n_groups: int, form: str, hidden: int = 0):
        super().__init__()
        self.form = form
        self.sharpness = nn.Parameter(torch.ones(()))
        in_dim = num_classes if form == "dp" else num_classes * (1 + num_classes)
        # Linear (hidden=0, as in the paper) or a one-hidden-layer MLP.
        self.net = nn.Linear(in_dim, n_groups) if hidden <= 0 else nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_groups))

    def inputs(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = torch.softmax((1 + self.sharpness.abs()) * logits, dim=1)
        if self.form == "dp":
            return s
        onehot = F.one_hot(y, logits.shape[1]).to(s.dtype)
        return torch.cat([s, (onehot[:, :, None] * s[:, None, :]).flatten(1)], dim=1)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(self.inputs(logits, y))


class DebiasModel(nn.Module):
    """The predictor (backbone + head) and its adversary; `forward` is the predictor alone."""

    def __init__(self, predictor: Classifier, adversary: Adversary):
        super().__init__()
        self.predictor = predictor
        self.adversary = adversary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)


@register_method("adv-debias")
class AdversarialDebiasing(Provenance, TorchMethod):
    description = "Adversarial debiasing: projected predictor updates against an adversary predicting the group from the output"
    paper = "Zhang, Lemoine & Mitchell (2018), Mitigating unwanted biases with adversarial learning (AIES)"
    reference = "Trusted-AI/AIF360 aif360/algorithms/inprocessing/adversarial_debiasing.py"
    departures = (
        "alpha defaults to 1 (AIF360: adversary_loss_weight 0.1) and the adversary takes adv_steps=5 steps per "
        "predictor step at its own lr (AIF360: 1 step, the predictor's lr); both are hyperparameters",
        "AIF360 decays both learning rates exponentially; here the shared schedule (cosine) applies to the "
        "predictor and the adversary's Adam runs at a constant rate",
        "more than two groups or classes: softmax adversary over groups, fed s and s x one-hot(y) "
        "(the paper's binary sigmoid form generalised)",
    )
    hparams = {
        **TRAINING_HPARAMS,
        "form": Choice("dp", choices=("dp", "eodds"), search=False),
        "alpha": LogFloat(1.0, low=0.01, high=10.0),
        "adv_lr": LogFloat(1e-2, low=1e-4, high=1e-1, search=False),
        "adv_hidden": Int(0, low=0, high=512, search=False),
        "adv_steps": Int(5, low=1, high=20, search=False),  # adversary updates per predictor update
    }

    def setup(self, task: TaskData, ctx: FitContext) -> None:
        self._adv_opt: torch.optim.Optimizer | None = None
        self._adv_model: nn.Module | None = None

    def build_model(self, task: TaskData) -> nn.Module:
        predictor = Classifier(self.build_backbone(task), task.num_classes)
        adversary = Adversary(task.num_classes, task.n_groups, self.hp["form"], self.hp["adv_hidden"])
        return DebiasModel(predictor, adversary)

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        # The adversary has its own optimiser; the main one moves the predictor only.
        return [{"params": [p for p in model.predictor.parameters() if p.requires_grad]}]

    def adversary_optimizer(self, model: DebiasModel) -> torch.optim.Optimizer:
        if getattr(self, "_adv_opt", None) is None or self._adv_model is not model:
            self._adv_opt = torch.optim.Adam(model.adversary.parameters(), lr=self.hp["adv_lr"])
            self._adv_model = model
        return self._adv_opt

    def losses(self, model: DebiasModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predictor's logits, its cross-entropy, the adversary's cross-entropy) on one batch."""
        logits = model.predictor(batch.x)
        group_logits = model.adversary(logits, batch.y)
        return logits, F.cross_entropy(logits, batch.y), F.cross_entropy(group_logits, batch.group)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.losses(model, batch)[1]

    def train_step(self, model: nn.Module, batch: Batch, opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, ctx: FitContext) -> torch.Tensor:
        adv_opt = self.adversary_optimizer(model)
        pred_params = [p for p in model.predictor.parameters() if p.requires_grad]
        adv_params = [p for p in model.adversary.parameters() if p.requires_grad]
        with autocast(ctx):
            logits, loss_pred, loss_adv = self.losses(model, batch)
        if not (torch.isfinite(loss_pred) and torch.isfinite(loss_adv)):
            raise FloatingPointError(f"{self.name}: losses became {loss_pred.item()} / {loss_adv.item()}; lower lr or alpha")
        # Both losses carry the same scale, so the (scale-equivariant) projected update stays consistent.
        g_pred = torch.autograd.grad(scaler.scale(loss_pred), pred_params, retain_graph=True, allow_unused=True)
        g_adv = torch.autograd.grad(scaler.scale(loss_adv), pred_params + adv_params, allow_unused=True)
        opt.zero_grad(set_to_none=True)
        adv_opt.zero_grad(set_to_none=True)
        alpha = self.hp["alpha"]
        for p, gp, ga in zip(pred_params, g_pred, g_adv[:len(pred_params)]):
            gp = torch.zeros_like(p) if gp is None else gp
            p.grad = gp if ga is None else projected_update(gp, ga, alpha)
        for p, ga in zip(adv_params, g_adv[len(pred_params):]):
            p.grad = ga
        scaler.step(opt)
        scaler.step(adv_opt)
        scaler.update()
        # Extra adversary steps keep it close to its best response, which the method's
        # argument assumes; otherwise the predictor learns to fool a stale adversary.
        logits = logits.detach()
        for _ in range(self.hp["adv_steps"] - 1):
            with autocast(ctx):
                loss = F.cross_entropy(model.adversary(logits, batch.y), batch.group)
            adv_opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(adv_opt)
            scaler.update()
        return loss_pred.detach()
