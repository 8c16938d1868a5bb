"""FairSDE's losses against a transcription of the authors' released training step (Carco-git/FairSDE, train.py).

The transcription below follows the released code's order of operations on its own
tensor layout ([G, B, C] outputs and centre cosines, a loop over groups, a loop over
samples for the pairs), written out again here, so that a change of formula in
`methods.fairsde.losses` cannot pass unnoticed. Pairs are given, not drawn, so both
sides see the same partners.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noharm.methods.fairsde import losses as L

TEMPERATURE = 0.07  # train.py --temperature default
T_V = 0.1  # hard-coded in train.py's virtual-centre loss


def authors_step(outputs_full, virtual_centers, rep_feature, attr_logits, target, sens, pos_idx, neg_idx,
                 lambdas=(0.1, 0.1, 0.1)):
    """The released train.py loss of one batch, transcribed: returns (total, cls, disc, virt, div)."""
    n_groups, batch, n_classes = outputs_full.shape
    disc = F.cross_entropy(attr_logits, sens)
    cls = 0.0
    for i in range(n_groups):
        idx = (sens == i).nonzero().squeeze(1)
        if idx.numel() > 0:
            cls = cls + F.cross_entropy(outputs_full[i][idx], target[idx])
    virt = 0.0
    combined = torch.zeros(batch, n_classes, dtype=outputs_full.dtype)
    for i in range(n_groups):
        idx = (sens == i).nonzero().squeeze(1)
        if idx.numel() > 0:
            soft = F.softmax(virtual_centers[i][idx] / T_V, dim=1)
            onehot = torch.zeros_like(soft).scatter_(1, target[idx].unsqueeze(1), 1)
            virt = virt + -torch.sum(onehot * torch.log(soft)) / batch
            combined[idx] = virtual_centers[i][idx]
    z = F.normalize(rep_feature, dim=1)
    exp_pos = torch.exp(torch.sum(z * z[pos_idx], dim=1) / TEMPERATURE)
    onehot = torch.eye(n_classes, dtype=outputs_full.dtype)[target]
    exp_pos = exp_pos + torch.exp(torch.sum(onehot * combined, dim=1) / TEMPERATURE)
    mask = torch.ones(batch, n_groups, n_classes, dtype=torch.bool)
    mask[torch.arange(batch), sens, target] = False
    masked = virtual_centers.permute(1, 0, 2)[mask].view(batch, -1)
    neg_sum = torch.exp(masked).sum(dim=1) / TEMPERATURE
    neg_sum = torch.where(neg_sum == 0, torch.ones_like(neg_sum), neg_sum)
    div = -torch.log(exp_pos / (torch.exp(torch.sum(z * z[neg_idx], dim=1) / TEMPERATURE) + neg_sum)).mean()
    l1, l2, l3 = lambdas
    return cls + l1 * disc + l2 * virt + l3 * div, cls, disc, virt, div


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(11)
    n_groups, b, c, d = 3, 12, 2, 5
    sens = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    target = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    feature = torch.randn(b, d, generator=g, dtype=torch.float64)
    z = F.normalize(feature, dim=1)
    centres = F.normalize(torch.randn(n_groups, c, d, generator=g, dtype=torch.float64), dim=2)
    cos = torch.einsum("bd,gcd->bgc", z, centres)  # ours: [B, G, C]
    logits = torch.randn(b, n_groups, c, generator=g, dtype=torch.float64)
    attr = torch.randn(b, n_groups, generator=g, dtype=torch.float64)
    # Same-group same-class partner and other-group same-class negative for every row (each exists here).
    pos = torch.tensor([2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9])
    neg = torch.tensor([4, 5, 8, 9, 0, 1, 10, 11, 2, 3, 6, 7])
    return dict(feature=feature, z=z, cos=cos, logits=logits, attr=attr, y=target, a=sens, pos=pos, neg=neg)


def test_each_loss_equals_the_authors_step(batch):
    b = batch
    total, cls, disc, virt, div = authors_step(b["logits"].permute(1, 0, 2), b["cos"].permute(1, 0, 2), b["feature"],
                                               b["attr"], b["y"], b["a"], b["pos"], b["neg"])
    assert L.group_classification_loss(b["logits"], b["y"], b["a"]).item() == pytest.approx(cls.item(), rel=1e-12)
    assert L.discriminator_loss(b["attr"], b["a"]).item() == pytest.approx(disc.item(), rel=1e-12)
    assert L.virtual_center_loss(b["cos"], b["y"], b["a"], T_V).item() == pytest.approx(virt.item(), rel=1e-12)
    ours_div = L.diversity_loss(b["z"], b["cos"], b["y"], b["a"], b["pos"], b["neg"], tau=TEMPERATURE)
    assert ours_div.item() == pytest.approx(div.item(), rel=1e-10)
    # The "scaled" option (exp(s / tau) for the centre negatives) is not the authors' sum.
    scaled = L.diversity_loss(b["z"], b["cos"], b["y"], b["a"], b["pos"], b["neg"], tau=TEMPERATURE,
                              center_negatives="scaled")
    assert abs(scaled.item() - div.item()) > 0.1


def test_missing_negative_is_dropped_where_the_authors_take_sample_zero(batch):
    # Documented departure: with no other-group same-class sample the release uses row 0 of the batch as the
    # "negative" (whatever its group and class); we drop the term. Both agree where row 0 is a real negative.
    b = batch
    neg = b["neg"].clone()
    neg[5] = -1
    ours = L.diversity_loss(b["z"], b["cos"], b["y"], b["a"], b["pos"], neg, tau=TEMPERATURE)
    theirs_idx = torch.where(neg >= 0, neg, torch.zeros_like(neg))
    theirs = authors_step(b["logits"].permute(1, 0, 2), b["cos"].permute(1, 0, 2), b["feature"], b["attr"], b["y"],
                          b["a"], b["pos"], theirs_idx)[4]
    dropped = L.diversity_loss(b["z"], b["cos"], b["y"], b["a"], b["pos"], b["neg"], tau=TEMPERATURE)
    assert ours.item() != pytest.approx(theirs.item(), rel=1e-6)
    assert dropped.item() == pytest.approx(authors_step(b["logits"].permute(1, 0, 2), b["cos"].permute(1, 0, 2),
                                                        b["feature"], b["attr"], b["y"], b["a"], b["pos"],
                                                        b["neg"])[4].item(), rel=1e-10)


def test_infonce_form_adds_the_positives_to_the_denominator(batch):
    b = batch
    ref = L.diversity_loss(b["z"], b["cos"], b["y"], b["a"], b["pos"], b["neg"], tau=TEMPERATURE)
    nce = L.diversity_loss(b["z"], b["cos"], b["y"], b["a"], b["pos"], b["neg"], tau=TEMPERATURE, form="infonce")
    num_terms = []
    den_terms = []
    z, cos, y, a, pos, neg = b["z"], b["cos"], b["y"], b["a"], b["pos"], b["neg"]
    for i in range(len(y)):
        num = torch.exp(z[i] @ z[pos[i]] / TEMPERATURE) + torch.exp(cos[i, a[i], y[i]] / TEMPERATURE)
        others = [cos[i, g, c] for g in range(cos.shape[1]) for c in range(cos.shape[2]) if (g, c) != (a[i], y[i])]
        den = torch.exp(z[i] @ z[neg[i]] / TEMPERATURE) + sum(torch.exp(s) for s in others) / TEMPERATURE
        num_terms.append(num)
        den_terms.append(den)
    num, den = torch.stack(num_terms), torch.stack(den_terms)
    assert ref.item() == pytest.approx((-torch.log(num / den)).mean().item(), rel=1e-10)
    assert nce.item() == pytest.approx((-torch.log(num / (num + den))).mean().item(), rel=1e-10)
    assert nce.item() > 0  # InfoNCE is bounded below by 0
    with pytest.raises(ValueError, match="unknown form 'nce'; choose one of: reference, infonce"):
        L.diversity_loss(z, cos, y, a, pos, neg, form="nce")
