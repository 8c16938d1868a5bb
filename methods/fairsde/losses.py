"""FairSDE's four losses as pure, batch-first functions, plus the pair sampler of the diversity loss.

Shapes: B samples, G groups, C classes, D feature dimensions. `y` and `a`
(the group) are long tensors [B]. Every function checks its shapes and raises
ValueError with what is wrong and what it expects.

L = L_cls + lambda1 * L_disc + lambda2 * L_virt + lambda3 * L_div, with

- L_cls  = sum over groups a in the batch of the mean CE of h_a(f) on group a's samples;
- L_disc = mean CE(d(f), a)  (plain CE: the representation learns to *encode* the group);
- L_virt = mean_i CE(s_{a_i, .}(x_i) / t_v, y_i)  (own group's centres only);
- L_div  = -mean_i log( [exp(z_i.z_p(i)/tau) + exp(s_{a_i,y_i}(x_i)/tau)]
                        / [exp(z_i.z_n(i)/tau) + N_i] ),
  N_i = sum_{(a',y') != (a_i,y_i)} exp(s_{a',y'}(x_i)/tau)   (center_negatives="scaled"), or
  N_i = sum_{(a',y') != (a_i,y_i)} exp(s_{a',y'}(x_i)) / tau (center_negatives="reference",
  as the authors' released code computes it, and this suite's default).

`form="reference"` is the authors' ratio above: the numerator's terms are not in
the denominator, so the loss keeps falling as the partner and the own centre
align (down to about -1/tau) and its pull on the same-cell partner never fades;
at large lambda_div every group's features collapse onto one direction
(docs/fairsde.md). `form="infonce"` (the `fairsde-nce` variant, not the
authors') puts the numerator's terms in the denominator as well,
-log(num / (num + den)), the InfoNCE form: bounded below by 0, with a gradient
that vanishes once the positives dominate the negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CENTER_NEGATIVES = ("scaled", "reference")
DIVERSITY_FORMS = ("reference", "infonce")


def _check_labels(y: torch.Tensor, a: torch.Tensor, batch: int, where: str) -> None:
    for name, t in (("y", y), ("a", a)):
        if t.dim() != 1 or t.shape[0] != batch:
            raise ValueError(f"{where}: {name} must have shape [{batch}] (one label per sample), got {tuple(t.shape)}")
        if t.dtype != torch.long:
            raise ValueError(f"{where}: {name} must be a long (int64) tensor, got {t.dtype}")


def _check_scores(t: torch.Tensor, name: str, where: str) -> tuple[int, int, int]:
    if t.dim() != 3:
        raise ValueError(f"{where}: {name} must have shape [B, G, C] (sample, group, class), got {tuple(t.shape)}")
    return tuple(t.shape)  # type: ignore[return-value]


def _check_range(t: torch.Tensor, n: int, name: str, where: str) -> None:
    # One host sync; these are cheap next to a backbone pass and catch silent wrong indexing.
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"{where}: {name} values must lie in [0, {n - 1}], got [{int(t.min())}, {int(t.max())}]")


def own_group(scores: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Each sample's own group's row: [B, G, C] -> [B, C]."""
    return scores[torch.arange(scores.shape[0], device=scores.device), a]


def group_classification_loss(logits: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """L_cls: sum over the groups present in the batch of the mean CE of their own head. `logits` [B, G, C]."""
    where = "group_classification_loss"
    b, g, c = _check_scores(logits, "logits", where)
    _check_labels(y, a, b, where)
    _check_range(a, g, "a (group)", where)
    _check_range(y, c, "y (class)", where)
    ce = F.cross_entropy(own_group(logits, a), y, reduction="none")
    sums = torch.zeros(g, dtype=ce.dtype, device=ce.device).index_add(0, a, ce)
    counts = torch.bincount(a, minlength=g)
    present = counts > 0
    return (sums[present] / counts[present]).sum()


def discriminator_loss(group_logits: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """L_disc: mean CE of the group discriminator's logits `group_logits` [B, G] against the group `a`."""
    where = "discriminator_loss"
    if group_logits.dim() != 2:
        raise ValueError(f"{where}: group_logits must have shape [B, G], got {tuple(group_logits.shape)}")
    if a.dim() != 1 or a.shape[0] != group_logits.shape[0]:
        raise ValueError(f"{where}: a must have shape [{group_logits.shape[0]}], got {tuple(a.shape)}")
    _check_range(a, group_logits.shape[1], "a (group)", where)
    return F.cross_entropy(group_logits, a)


def virtual_center_loss(cos_sim: torch.Tensor, y: torch.Tensor, a: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """L_virt: mean CE of the own group's cosine similarities / `temperature` against y. `cos_sim` [B, G, C]."""
    where = "virtual_center_loss"
    b, g, c = _check_scores(cos_sim, "cos_sim", where)
    _check_labels(y, a, b, where)
    if not temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature}")
    _check_range(a, g, "a (group)", where)
    _check_range(y, c, "y (class)", where)
    return F.cross_entropy(own_group(cos_sim, a) / temperature, y)


def diversity_loss(
    z: torch.Tensor,
    cos_sim: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    pos_idx: torch.Tensor,
    neg_idx: torch.Tensor,
    tau: float = 0.07,
    center_negatives: str = "reference",
    form: str = "reference",
) -> torch.Tensor:
    """L_div: contrastive loss pulling a sample to its group-and-class partner and its own centre.

    `z` [B, D] normalised features, `cos_sim` [B, G, C] cosines to every centre,
    `pos_idx` [B] the partner p(i) (same group and class; i itself when there is
    none), `neg_idx` [B] the negative n(i) (same class, other group; -1 when none).
    Computed in log-space: -log(num/den) = logsumexp(den terms) - logsumexp(num terms);
    with `form="infonce"` the numerator's terms join the denominator.
    """
    where = "diversity_loss"
    if form not in DIVERSITY_FORMS:
        raise ValueError(f"{where}: unknown form {form!r}; choose one of: {', '.join(DIVERSITY_FORMS)}")
    if center_negatives not in CENTER_NEGATIVES:
        raise ValueError(f"{where}: unknown center_negatives {center_negatives!r}; choose one of: {', '.join(CENTER_NEGATIVES)}")
    if not tau > 0:
        raise ValueError(f"{where}: tau must be > 0, got {tau}")
    if z.dim() != 2:
        raise ValueError(f"{where}: z must have shape [B, D], got {tuple(z.shape)}")
    b, g, c = _check_scores(cos_sim, "cos_sim", where)
    if z.shape[0] != b:
        raise ValueError(f"{where}: z has {z.shape[0]} rows but cos_sim has {b}; both need one row per sample")
    if g * c < 2:
        raise ValueError(f"{where}: needs at least two (group, class) centres, got G={g}, C={c}")
    _check_labels(y, a, b, where)
    for name, idx in (("pos_idx", pos_idx), ("neg_idx", neg_idx)):
        if idx.dim() != 1 or idx.shape[0] != b:
            raise ValueError(f"{where}: {name} must have shape [{b}], got {tuple(idx.shape)}")
        if idx.dtype != torch.long:
            raise ValueError(f"{where}: {name} must be a long (int64) tensor, got {idx.dtype}")
    _check_range(a, g, "a (group)", where)
    _check_range(y, c, "y (class)", where)
    _check_range(pos_idx, b, "pos_idx", where)
    if len(neg_idx) and (int(neg_idx.min()) < -1 or int(neg_idx.max()) >= b):
        raise ValueError(f"{where}: neg_idx values must be -1 (no negative) or lie in [0, {b - 1}]")

    rows = torch.arange(b, device=z.device)
    pos_sim = (z * z[pos_idx]).sum(dim=1) / tau
    has_neg = neg_idx >= 0
    neg_sim = (z * z[neg_idx.clamp(min=0)]).sum(dim=1) / tau
    # exp(-inf) = 0 drops the negative-sample term where there is none.
    neg_sim = torch.where(has_neg, neg_sim, torch.full_like(neg_sim, -math.inf))

    flat = cos_sim.reshape(b, g * c)
    own = a * c + y
    own_center = flat[rows, own] / tau
    others = torch.ones_like(flat, dtype=torch.bool)
    others[rows, own] = False
    if center_negatives == "scaled":
        center_logits = flat / tau
        log_n = torch.logsumexp(center_logits.masked_fill(~others, -math.inf), dim=1)
    else:
        log_n = torch.logsumexp(flat.masked_fill(~others, -math.inf), dim=1) - math.log(tau)

    log_num = torch.logsumexp(torch.stack([pos_sim, own_center], dim=1), dim=1)
    den_terms = [neg_sim, log_n] if form == "reference" else [pos_sim, own_center, neg_sim, log_n]
    log_den = torch.logsumexp(torch.stack(den_terms, dim=1), dim=1)
    return (log_den - log_num).mean()


def _uniform_below(high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform integer in [0, high_i) per entry (0 where high_i <= 0)."""
    dev = generator.device if generator is not None else high.device
    u = torch.rand(high.shape, generator=generator, device=dev).to(high.device)
    draw = (u * high.to(u.dtype)).floor().long()
    # Float rounding can land exactly on `high`; clamp keeps the draw in range.
    return torch.minimum(draw, (high - 1).clamp(min=0))


def _bucket_bounds(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stable sort by `keys`; returns (order, start of each sorted sample's bucket, bucket size)."""
    order = torch.sort(keys, stable=True).indices
    return (order, *_run_bounds(keys[order]))


def _run_bounds(sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of a sorted key vector: where its run of equal keys starts, and the run's length."""
    # return_inverse gives each entry its run number (repeat_interleave would too, but it is
    # pathologically slow on small CPU tensors when threads are contended).
    _, run, counts = torch.unique_consecutive(sorted_keys, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return starts[run], counts[run]


def sample_pairs(y: torch.Tensor, a: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw each sample's positive and negative partner for the diversity loss, vectorised.

    pos_idx[i]: a uniformly random *other* sample with the same group and class
    (i itself when i is alone in its cell). neg_idx[i]: a uniformly random sample
    with the same class and another group (-1 when there is none). Reproducible
    given `generator`'s seed.
    """
    if y.dim() != 1 or a.dim() != 1 or y.shape != a.shape:
        raise ValueError(f"sample_pairs: y and a must be 1-D of one length, got {tuple(y.shape)} and {tuple(a.shape)}")
    b = y.shape[0]
    if b == 0:
        empty = torch.empty(0, dtype=torch.long, device=y.device)
        return empty, empty.clone()
    if int(y.min()) < 0 or int(a.min()) < 0:
        raise ValueError("sample_pairs: y and a must be non-negative integer labels")
    y, a = y.long(), a.long()
    n_groups = int(a.max()) + 1

    # Samples sorted by (class, group): a class is one contiguous block, each
    # (class, group) cell a contiguous sub-block of it.
    cell = y * n_groups + a
    order, cell_start, cell_size = _bucket_bounds(cell)
    pos_in_sorted = torch.arange(b, device=y.device)
    rank = pos_in_sorted - cell_start

    # Positive: shift by a uniform offset in 1..m-1 within the cell (uniform over the other members).
    offset = 1 + _uniform_below(cell_size - 1, generator)
    partner = torch.where(cell_size > 1, cell_start + (rank + offset) % cell_size, pos_in_sorted)

    # Negative: a uniform draw over the class block minus the sample's own cell.
    class_start, class_size = _run_bounds(y[order])
    n_other = class_size - cell_size
    k = _uniform_below(n_other, generator)
    before = cell_start - class_start  # samples of the class that sit before the own cell
    neg_sorted = class_start + torch.where(k < before, k, k + cell_size)
    neg_sorted = torch.where(n_other > 0, neg_sorted, torch.full_like(neg_sorted, -1))

    pos_idx = torch.empty(b, dtype=torch.long, device=y.device)
    neg_idx = torch.empty(b, dtype=torch.long, device=y.device)
    pos_idx[order] = order[partner]
    neg_idx[order] = torch.where(neg_sorted >= 0, order[neg_sorted.clamp(min=0)], neg_sorted)
    return pos_idx, neg_idx
