"""Fair supervised contrastive learning (FSCL, Park et al., 2022), trained as the reference code trains it.

Stage 1 (contrastive, every one of `epochs`) trains the backbone and an MLP
projection head with the fair supervised contrastive loss alone, on two
views of every batch; the last epoch's encoder is kept (there is no
classifier to validate yet). Stage 2 freezes the backbone (eval mode) and
fits the linear classifier on its features of the train rows: a multinomial
logistic regression (L2, inverse strength `probe_C`, L-BFGS to convergence)
on standardised features, written into the model's linear head. Both stages
run inside one trial.

The loss, as the reference's `FairSupConLoss` (method "FSCL") computes it:
the 2B views are anchors; with s_ij = e_i.e_j / t on unit-norm embeddings,

    P(i) = {p != i : y_p = y_i}                  every same-class view but the anchor itself
    N(i) = {k : y_k != y_i, g_k = g_i}            other-class views of the anchor's own group
    l_i  = -(t / t_base) * 1/|P(i)| * sum_{p in P(i)} [ s_ip - log sum_{k in N(i)} exp(s_ik) ]

averaged over all anchors, t_base = 0.07. The positive's own term is not in
the denominator; when N(i) is empty the reference replaces the sum by 1
after shifting every s_i. by its row maximum, so the term becomes
s_ip - max_j s_ij. Pulling a class together across groups while pushing
classes apart only within a group leaves the group nothing to separate.

`group_norm` (FSCL+) applies the reference's group-wise normalisation as its
code computes it: each positive's term is divided by that positive's own
count of same-group positives (the reference's broadcasting divides column j
by row j's count), and each anchor's loss is multiplied by N / 8 / (c_i + 1),
c_i the anchor's same-group positive count, N = 2B.

Views: the first is the batch as the training loop augments it, the second
the same rows augmented again independently with the dataset's protocol
(`view_augment=auto`) or another one. Tabular rows and image sets without an
augmentation protocol (digits-shift) get two identical inputs; the backbone's
dropout (MLP) still makes the two embeddings differ.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from noharm.datasets.augment import AUGMENTATIONS, apply_augment
from noharm.methods import register_method
from noharm.methods.base import FitContext, Predictor, TaskData
from noharm.methods.batches import Batch, BatchSource
from noharm.methods.hparams import Bool, Choice, Int, LogFloat
from noharm.methods.linear_layer import full_classes, linear_to_logits, load_standardised
from noharm.methods.provenance import Provenance
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod, TorchPredictor, train, use_channels_last

# The reference's base temperature (the loss is scaled by t / t_base).
BASE_TEMPERATURE = 0.07
# L-BFGS iterations of the classifier on frozen features (it converges well before on standardised features).
PROBE_MAX_ITER = 1000


def fair_supcon_loss(views: torch.Tensor, y: torch.Tensor, group: torch.Tensor, temperature: float,
                     base_temperature: float = BASE_TEMPERATURE, group_norm: bool = False) -> torch.Tensor:
    """The FSCL loss of unit-norm embeddings `views` [B, V, D] (V views of each row) with labels and groups [B]."""
    b, v = views.shape[:2]
    anchors = torch.cat(torch.unbind(views, dim=1), dim=0)  # [V*B, D], view-major like the reference
    y, group = y.repeat(v), group.repeat(v)
    sim = anchors @ anchors.T / temperature
    logits = sim - sim.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    same_y = y[:, None] == y[None, :]
    same_g = group[:, None] == group[None, :]
    positive = same_y & not_self
    negative = ~same_y & same_g
    neg_sum = (torch.exp(logits) * negative).sum(1, keepdim=True)
    log_prob = logits - torch.log(neg_sum + (neg_sum == 0).to(neg_sum.dtype))
    pos = positive.to(log_prob.dtype)
    if group_norm:
        same_group_pos = (positive & same_g).sum(1).to(log_prob.dtype).clamp_min(1)
        mean_log_prob = (pos * log_prob / same_group_pos[None, :]).sum(1)
        loss = -(temperature / base_temperature) * mean_log_prob
        loss = loss * (len(y) / 8) / (same_group_pos + 1)
    else:
        # Every anchor has a positive when V >= 2 (its other view); the clamp only guards V = 1.
        mean_log_prob = (pos * log_prob).sum(1) / pos.sum(1).clamp_min(1)
        loss = -(temperature / base_temperature) * mean_log_prob
    return loss.mean()


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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(x)).float(), dim=1)


@register_method("fscl")
class FSCL(Provenance, TorchMethod):
    description = ("FSCL: encoder trained by the fair supervised contrastive loss on two views (positives: same class; "
                   "negatives: other class, own group), then a linear classifier fitted on frozen features")
    paper = "Park et al. (2022), Fair contrastive learning for facial attribute classification (CVPR)"
    reference = ("FairSupConLoss (method 'FSCL') of the authors' losses.py, as vendored in osu-srml/NH-Fair "
                 "methods/cv/fscl.py with its two-stage training loop")
    departures = (
        "the linear classifier is a logistic regression fitted to convergence (L-BFGS) on the frozen features of "
        "un-augmented train rows, after all `epochs` of contrastive training; the references train it by "
        "SGD/Adam on augmented views for extra epochs (NH-Fair: the last 60 of its epochs), whose limit this is, "
        "and which a 3-epoch budget could not reach",
        "no epoch is chosen on validation: the encoder is the last contrastive epoch's (NH-Fair switches to the "
        "classifier early when the contrastive loss stops falling, and keeps its best classifier epoch)",
        "the second view uses the dataset's augmentation protocol, not SimCLR's colour jitter and grayscale; "
        "tabular rows and digits-shift (no protocol) get two identical inputs (the MLP's dropout still differs)",
        "temperature 0.1 (NH-Fair's setting) with t_base 0.07; the loss's edge cases (no negatives) follow the code",
    )
    hparams = {
        **TRAINING_HPARAMS,
        "temperature": LogFloat(0.1, low=0.05, high=0.5),
        "proj_dim": Int(128, low=16, high=1024, search=False),
        "probe_C": LogFloat(1.0, low=1e-2, high=1e2),  # inverse L2 strength of the classifier on frozen features
        "group_norm": Bool(False),  # FSCL+: the reference's group-wise normalisation
        "view_augment": Choice("auto", choices=("auto", "none", *AUGMENTATIONS), search=False),
    }

    def prepare_views(self, task: TaskData, ctx: FitContext) -> None:
        """Un-augmented inputs for the second view (on CPU they share memory with the loop's own batch source)."""
        self.views = BatchSource(task, ctx.device, channels_last=use_channels_last(task, ctx))
        augment = task.augment if self.hp["view_augment"] == "auto" else self.hp["view_augment"]
        self.view_augment = None if augment in (None, "none") or task.kind != "image" else augment
        self.view_generator = torch.Generator().manual_seed(ctx.seed + 1)

    def build_model(self, task: TaskData) -> nn.Module:
        return FSCLModel(self.build_backbone(task), task.num_classes, self.hp["proj_dim"])

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        # The head is fitted afterwards, in closed form: the optimiser moves the encoder and projection only.
        params = list(model.backbone.parameters()) + list(model.projection.parameters())
        return [{"params": [p for p in params if p.requires_grad]}]

    def second_view(self, batch: Batch) -> torch.Tensor:
        x = self.views.inputs(batch.index.cpu().numpy())
        return apply_augment(x, self.view_augment, self.view_generator) if self.view_augment else x

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        b = len(batch.y)
        emb = model.embed(torch.cat([batch.x, self.second_view(batch)]))
        views = torch.stack([emb[:b], emb[b:]], dim=1)
        return fair_supcon_loss(views, batch.y, batch.group, self.hp["temperature"], group_norm=self.hp["group_norm"])

    def fit(self, task: TaskData, ctx: FitContext) -> Predictor:
        # Stage 1: no classifier yet, so no validation objective (the last epoch's encoder is kept).
        self.prepare_views(task, ctx)
        try:
            predictor = train(self, task, dataclasses.replace(ctx, objective=None))
        finally:
            self.views = None
        self.fit_classifier(predictor, task, ctx)
        return predictor

    def fit_classifier(self, predictor: TorchPredictor, task: TaskData, ctx: FitContext) -> None:
        """Stage 2: the linear head as a logistic regression on the frozen features of the train rows."""
        rows = task.indices("train")
        model = predictor.model
        feats = predictor.map_rows(lambda m, batch: m.backbone(batch.x), rows, model.backbone.out_dim)
        scaler = StandardScaler().fit(feats)
        clf = LogisticRegression(C=self.hp["probe_C"], max_iter=PROBE_MAX_ITER, random_state=ctx.seed)
        clf.fit(scaler.transform(feats), task.y[rows])
        coef, intercept = linear_to_logits(clf.coef_, clf.intercept_, len(clf.classes_))
        load_standardised(model.head, *full_classes(coef, intercept, clf.classes_, task.num_classes), scaler)
