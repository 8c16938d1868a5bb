"""FairSDE's losses against hand-computed values (explicit per-sample loops), and the pair sampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from noharm.methods.fairsde.losses import (
    diversity_loss,
    discriminator_loss,
    group_classification_loss,
    sample_pairs,
    virtual_center_loss,
)


def ce(scores: list[float], target: int) -> float:
    """-log softmax(scores)[target], by the definition."""
    return -math.log(math.exp(scores[target]) / sum(math.exp(s) for s in scores))


@pytest.fixture
def small():
    """B=7 samples, G=3 groups (group 2 absent), C=2 classes, D=4, in float64."""
    gen = torch.Generator().manual_seed(3)
    b, g, c, d = 7, 3, 2, 4
    z = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    return {
        "logits": torch.randn(b, g, c, generator=gen, dtype=torch.float64),
        "group_logits": torch.randn(b, g, generator=gen, dtype=torch.float64),
        "cos_sim": torch.rand(b, g, c, generator=gen, dtype=torch.float64) * 2 - 1,
        "z": z,
        "y": torch.tensor([0, 1, 0, 1, 1, 0, 0]),
        "a": torch.tensor([0, 0, 1, 1, 0, 0, 1]),
    }


# ---------------------------------------------------------------- L_cls, L_disc, L_virt


def test_group_classification_loss_is_sum_of_per_group_means(small):
    logits, y, a = small["logits"], small["y"].tolist(), small["a"].tolist()
    per_group: dict[int, list[float]] = {}
    for i in range(len(y)):
        per_group.setdefault(a[i], []).append(ce(logits[i, a[i]].tolist(), y[i]))
    expected = sum(sum(v) / len(v) for v in per_group.values())  # group 2 is absent: contributes nothing
    got = group_classification_loss(logits, small["y"], small["a"])
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_group_classification_loss_hand_numbers():
    # Two samples, one per group; group 0's head gives [0, 0] (CE log 2), group 1's [2, 0] on class 0 (CE log(1+e^-2)).
    logits = torch.tensor([[[0.0, 0.0], [5.0, 5.0]], [[9.0, 1.0], [2.0, 0.0]]])
    got = group_classification_loss(logits, torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert got.item() == pytest.approx(math.log(2) + math.log(1 + math.exp(-2)), rel=1e-6)


def test_discriminator_loss_is_mean_ce_on_group(small):
    gl, a = small["group_logits"], small["a"].tolist()
    expected = sum(ce(gl[i].tolist(), a[i]) for i in range(len(a))) / len(a)
    assert discriminator_loss(gl, small["a"]).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t_v", [0.1, 0.5])
def test_virtual_center_loss_uses_own_group_centres_only(small, t_v):
    cs, y, a = small["cos_sim"], small["y"].tolist(), small["a"].tolist()
    expected = sum(ce([s / t_v for s in cs[i, a[i]].tolist()], y[i]) for i in range(len(y))) / len(y)
    assert virtual_center_loss(cs, small["y"], small["a"], temperature=t_v).item() == pytest.approx(expected, rel=1e-12)
    # Another group's centres do not enter: changing them leaves the loss unchanged.
    other = cs.clone()
    other[:, 2] += 5.0
    assert virtual_center_loss(other, small["y"], small["a"], temperature=t_v).item() == pytest.approx(expected, rel=1e-12)


def test_virtual_center_default_temperature_is_0_1():
    cs = torch.tensor([[[0.3, 0.1]]])
    got = virtual_center_loss(cs, torch.tensor([0]), torch.tensor([0]))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)


# ---------------------------------------------------------------- L_div


def diversity_by_loop(z, cos_sim, y, a, pos, neg, tau, center_negatives):
    """The formula of the issue, one sample at a time, in Python floats."""
    b, g, c = cos_sim.shape
    total = 0.0
    for i in range(b):
        dot = lambda j: sum(u * v for u, v in zip(z[i].tolist(), z[j].tolist()))  # noqa: E731
        num = math.exp(dot(pos[i]) / tau) + math.exp(cos_sim[i, a[i], y[i]].item() / tau)
        others = [cos_sim[i, ga, yc].item() for ga in range(g) for yc in range(c) if (ga, yc) != (a[i], y[i])]
        if center_negatives == "scaled":
            n_i = sum(math.exp(s / tau) for s in others)
        else:
            n_i = sum(math.exp(s) for s in others) / tau
        den = (math.exp(dot(neg[i]) / tau) if neg[i] >= 0 else 0.0) + n_i
        total += -math.log(num / den)
    return total / b


@pytest.mark.parametrize("center_negatives", ["scaled", "reference"])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_diversity_loss_equals_formula(small, center_negatives, tau):
    y, a = small["y"], small["a"]
    # Sample 6 (group 1, class 0) is paired with itself on purpose (no-partner case),
    # samples 1 and 4 have no negative (-1) although one exists: the term is simply dropped.
    pos = torch.tensor([5, 4, 6, 1, 1, 0, 6])
    neg = torch.tensor([2, -1, 0, 4, -1, 6, 5])
    got = diversity_loss(small["z"], small["cos_sim"], y, a, pos, neg, tau=tau, center_negatives=center_negatives)
    expected = diversity_by_loop(small["z"], small["cos_sim"], y.tolist(), a.tolist(), pos.tolist(), neg.tolist(),
                                 tau, center_negatives)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_diversity_loss_hand_numbers_without_partner_or_negative():
    # One sample, p(i) = i (z.z = 1), no negative; own centre cos 0.5, the other centre cos 0; tau 0.5:
    # scaled:    -log((e^2 + e^1) / e^0)        = -(1 + log(1 + e))
    # reference: -log((e^2 + e^1) / (e^0 / 0.5)) = log 2 - 1 - log(1 + e)
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    cos = torch.tensor([[[0.5], [0.0]]], dtype=torch.float64)
    y, a, pos, neg = torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([-1])
    scaled = diversity_loss(z, cos, y, a, pos, neg, tau=0.5, center_negatives="scaled")
    reference = diversity_loss(z, cos, y, a, pos, neg, tau=0.5, center_negatives="reference")
    assert scaled.item() == pytest.approx(-(1 + math.log(1 + math.e)), rel=1e-12)
    assert reference.item() == pytest.approx(math.log(2) - 1 - math.log(1 + math.e), rel=1e-12)


def test_diversity_loss_default_is_the_reference_with_tau_0_07(small):
    args = (small["z"], small["cos_sim"], small["y"], small["a"], torch.arange(7), torch.full((7,), -1))
    explicit = diversity_loss(*args, tau=0.07, center_negatives="reference", form="reference")
    assert diversity_loss(*args).item() == explicit.item()
    assert diversity_loss(*args, center_negatives="scaled").item() != pytest.approx(explicit.item())


def test_diversity_loss_is_stable_where_exp_overflows_float32():
    # cos/tau = 1/0.005 = 200: exp overflows float32 (and the naive ratio is inf/inf); log-space is exact.
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.3], [1.0, -0.1]]), dim=1)
    cos = torch.tensor([[[0.99, 0.98], [0.97, 0.5]]]).expand(3, 2, 2).contiguous()
    y, a = torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1])
    pos, neg = torch.tensor([1, 0, 2]), torch.tensor([2, 2, 0])
    got = diversity_loss(z, cos, y, a, pos, neg, tau=0.005, center_negatives="scaled")
    expected = diversity_by_loop(z.double(), cos.double(), y.tolist(), a.tolist(), pos.tolist(), neg.tolist(), 0.005, "scaled")
    assert torch.isfinite(got) and got.item() == pytest.approx(expected, rel=1e-4)


def test_diversity_loss_gradient_matches_direct_formula(small):
    """Autograd through the log-space version equals autograd through the formula written directly."""
    y, a = small["y"], small["a"]
    pos = torch.tensor([5, 4, 6, 1, 1, 0, 6])
    neg = torch.tensor([2, -1, 0, 4, -1, 6, 5])
    z1 = small["z"].clone().requires_grad_(True)
    c1 = small["cos_sim"].clone().requires_grad_(True)
    diversity_loss(z1, c1, y, a, pos, neg, tau=0.2, center_negatives="scaled").backward()
    z2 = small["z"].clone().requires_grad_(True)
    c2 = small["cos_sim"].clone().requires_grad_(True)
    terms = []
    for i in range(7):
        num = torch.exp(z2[i] @ z2[pos[i]] / 0.2) + torch.exp(c2[i, a[i], y[i]] / 0.2)
        mask = torch.ones(3, 2, dtype=torch.bool)
        mask[a[i], y[i]] = False
        den = torch.exp(c2[i][mask] / 0.2).sum() + (torch.exp(z2[i] @ z2[neg[i]] / 0.2) if neg[i] >= 0 else 0.0)
        terms.append(-torch.log(num / den))
    torch.stack(terms).mean().backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-10) and torch.allclose(c1.grad, c2.grad, atol=1e-10)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(small):
    z, cs, y, a = small["z"], small["cos_sim"], small["y"], small["a"]
    pos, neg = torch.arange(7), torch.full((7,), -1)
    with pytest.raises(ValueError, match=r"logits must have shape \[B, G, C\]"):
        group_classification_loss(cs[:, 0], y, a)
    with pytest.raises(ValueError, match=r"y must have shape \[7\]"):
        group_classification_loss(cs, y[:5], a)
    with pytest.raises(ValueError, match=r"a \(group\) values must lie in \[0, 2\]"):
        group_classification_loss(cs, y, a + 2)
    with pytest.raises(ValueError, match="long"):
        group_classification_loss(cs, y.float(), a)
    with pytest.raises(ValueError, match=r"group_logits must have shape \[B, G\]"):
        discriminator_loss(cs, a)
    with pytest.raises(ValueError, match=r"a must have shape \[7\]"):
        discriminator_loss(small["group_logits"], a[:3])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        virtual_center_loss(cs, y, a, temperature=0.0)
    with pytest.raises(ValueError, match=r"y \(class\) values must lie in \[0, 1\]"):
        virtual_center_loss(cs, y + 1, a)
    with pytest.raises(ValueError, match="unknown center_negatives 'paper'; choose one of: scaled, reference"):
        diversity_loss(z, cs, y, a, pos, neg, center_negatives="paper")
    with pytest.raises(ValueError, match="z has 6 rows but cos_sim has 7"):
        diversity_loss(z[:6], cs, y, a, pos, neg)
    with pytest.raises(ValueError, match=r"pos_idx must have shape \[7\]"):
        diversity_loss(z, cs, y, a, pos[:4], neg)
    with pytest.raises(ValueError, match="neg_idx values must be -1"):
        diversity_loss(z, cs, y, a, pos, neg - 1)
    with pytest.raises(ValueError, match="tau must be > 0"):
        diversity_loss(z, cs, y, a, pos, neg, tau=-1.0)
    with pytest.raises(ValueError, match="at least two"):
        diversity_loss(z, cs[:, :1, :1], y * 0, a * 0, pos, neg)
    with pytest.raises(ValueError, match="1-D of one length"):
        sample_pairs(y, a[:3], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="non-negative"):
        sample_pairs(y - 1, a, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- sample_pairs


def check_pairs(y: list[int], a: list[int], pos: list[int], neg: list[int]) -> None:
    for i in range(len(y)):
        mates = [j for j in range(len(y)) if j != i and y[j] == y[i] and a[j] == a[i]]
        others = [j for j in range(len(y)) if y[j] == y[i] and a[j] != a[i]]
        assert pos[i] in mates if mates else pos[i] == i
        assert neg[i] in others if others else neg[i] == -1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=40), st.integers(0, 2**31))
def test_sample_pairs_respect_group_and_class(cells, seed):
    y = torch.tensor([c for c, _ in cells])
    a = torch.tensor([g for _, g in cells])
    pos, neg = sample_pairs(y, a, torch.Generator().manual_seed(seed))
    assert pos.dtype == neg.dtype == torch.long and pos.shape == neg.shape == y.shape
    check_pairs(y.tolist(), a.tolist(), pos.tolist(), neg.tolist())


def test_sample_pairs_reproducible_given_seed():
    g = torch.Generator().manual_seed(0)
    y, a = torch.randint(0, 2, (64,), generator=g), torch.randint(0, 3, (64,), generator=g)
    first = sample_pairs(y, a, torch.Generator().manual_seed(11))
    again = sample_pairs(y, a, torch.Generator().manual_seed(11))
    other = sample_pairs(y, a, torch.Generator().manual_seed(12))
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert not all(torch.equal(u, v) for u, v in zip(first, other))


def test_sample_pairs_cover_every_valid_partner_evenly():
    # Class 0: 4 samples of group 0, 3 of group 1; class 1: one sample of group 0 and one of group 2.
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1])
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0, 2])
    gen = torch.Generator().manual_seed(5)
    draws = 2000
    pairs = [sample_pairs(y, a, gen) for _ in range(draws)]
    pos_all = torch.stack([p for p, _ in pairs]).T.tolist()  # [9, draws]
    neg_all = torch.stack([n for _, n in pairs]).T.tolist()
    pos_counts, neg_counts = [Counter(row) for row in pos_all], [Counter(row) for row in neg_all]
    # Sample 0: partners 1, 2, 3 (1/3 each), negatives 4, 5, 6 (1/3 each); sample 4: partners 5, 6 (1/2),
    # negatives 0..3 (1/4); sample 7: no partner (itself), negative 8 always.
    expectations = {(0, "pos"): {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}, (0, "neg"): {4: 1 / 3, 5: 1 / 3, 6: 1 / 3},
                    (4, "pos"): {5: 0.5, 6: 0.5}, (4, "neg"): {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25},
                    (7, "pos"): {7: 1.0}, (7, "neg"): {8: 1.0}}
    for (i, kind), probs in expectations.items():
        counts = (pos_counts if kind == "pos" else neg_counts)[i]
        assert set(counts) == set(probs), (i, kind, counts)
        for j, p in probs.items():
            # 5 standard deviations of a binomial frequency: fails only if the draw is biased.
            assert abs(counts[j] / draws - p) < 5 * math.sqrt(p * (1 - p) / draws) + 1e-9, (i, kind, j, counts)


def test_sample_pairs_on_empty_batch():
    pos, neg = sample_pairs(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), None)
    assert pos.numel() == 0 and neg.numel() == 0
