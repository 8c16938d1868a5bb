"""Adversarial baselines: gradient reversal, Zhang et al.'s projected update, and that the group gets harder to read."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from noharm.methods import FitContext, get_method
from noharm.methods.adv_debias import Adversary, projected_update
from noharm.methods.batches import BatchSource
from noharm.methods.gradient_reversal import GradientReversal, reverse_gradient
from noharm.methods.hparams import HparamError
from tests.conftest import make_task

FAST = {"backbone": "mlp", "hidden": 32, "batch_size": 64}


# --- gradient reversal ---------------------------------------------------------

@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 3.0])
def test_reversal_is_identity_forward_and_flips_scaled_gradient(weight):
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = reverse_gradient(x, weight)
    assert torch.equal(y, x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -weight * upstream)


def test_reversal_module_and_bad_weight():
    layer = GradientReversal(2.0)
    x = torch.ones(2, requires_grad=True)
    (layer(x) * torch.tensor([1.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-2.0, -6.0]))
    with pytest.raises(ValueError, match="weight must be >= 0"):
        reverse_gradient(x, -1.0)


def test_adv_rep_backbone_gets_the_discriminators_gradient_reversed():
    task = make_task(n=64)
    method = get_method("adv-rep")({**FAST, "adv_weight": 2.5})
    model = method.build_model(task).eval()
    x, g = torch.from_numpy(task.x), torch.from_numpy(task.group)

    def grads(reverse: bool):
        model.zero_grad()
        f = model.backbone(x)
        f = model.reversal(f) if reverse else f
        F.cross_entropy(model.discriminator(f), g).backward()
        return ([p.grad.clone() for p in model.backbone.parameters()],
                [p.grad.clone() for p in model.discriminator.parameters()])

    (back_rev, disc_rev), (back_plain, disc_plain) = grads(True), grads(False)
    for a, b in zip(back_rev, back_plain):
        torch.testing.assert_close(a, -2.5 * b)
    for a, b in zip(disc_rev, disc_plain):  # the discriminator itself still descends its own loss
        torch.testing.assert_close(a, b)


# --- Zhang et al.'s update -----------------------------------------------------

def test_projected_update_by_hand():
    g = torch.tensor([1.0, 2.0, 0.0])
    h = torch.tensor([2.0, 0.0, 0.0])
    # proj_h g = (2 / 4) * h = (1, 0, 0); minus alpha * h = (1, 0, 0) for alpha = 0.5.
    torch.testing.assert_close(projected_update(g, h, alpha=0.5), torch.tensor([-1.0, 2.0, 0.0]))
    # Nothing to project on: the plain gradient.
    torch.testing.assert_close(projected_update(g, torch.zeros(3), alpha=0.5), g)


@pytest.mark.parametrize("seed", range(5))
def test_projected_update_is_orthogonal_to_adversary_gradient_before_alpha_term(seed):
    gen = torch.Generator().manual_seed(seed)
    g, h = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
    alpha = 0.7
    update = projected_update(g, h, alpha)
    before_alpha = update + alpha * h
    assert abs(float((before_alpha * h).sum())) < 1e-5 * float(h.norm() * g.norm())
    # And it keeps g's component orthogonal to h untouched.
    perp = g - (g * h).sum() / (h * h).sum() * h
    torch.testing.assert_close(before_alpha, perp)


def test_adv_debias_step_applies_the_projected_update_and_trains_the_adversary():
    task = make_task(n=64)
    method = get_method("adv-debias")({**FAST, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                                       "lr": 0.1, "alpha": 0.7, "adv_steps": 1})
    method.setup(task, FitContext())
    model = method.build_model(task).eval()  # eval: dropout off, so both passes see the same network
    opt = method.make_optimizer(model)
    assert {id(p) for group in opt.param_groups for p in group["params"]} == {id(p) for p in model.predictor.parameters()}
    batch = BatchSource(task, torch.device("cpu")).batch(np.arange(64))
    pred_params = list(model.predictor.parameters())
    _, loss_pred, loss_adv = method.losses(model, batch)
    g = torch.autograd.grad(loss_pred, pred_params, retain_graph=True)
    h = torch.autograd.grad(loss_adv, pred_params)
    before = [p.detach().clone() for p in pred_params]
    adv_before = [p.detach().clone() for p in model.adversary.parameters()]
    method.train_step(model, batch, opt, torch.amp.GradScaler(enabled=False), FitContext())
    for p, p0, gi, hi in zip(pred_params, before, g, h):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * projected_update(gi, hi, 0.7), rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.adversary.parameters(), adv_before))


def test_adversary_inputs_by_form():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([1, 0])
    dp = Adversary(2, 3, "dp")
    s = torch.softmax(2.0 * logits, dim=1)  # sharpness starts at 1: scale 1 + |1|
    torch.testing.assert_close(dp.inputs(logits, y), s)
    eo = Adversary(2, 3, "eodds")
    expected = torch.cat([s, torch.tensor([[0, 0, s[0, 0], s[0, 1]], [s[1, 0], s[1, 1], 0, 0]])], dim=1)
    torch.testing.assert_close(eo.inputs(logits, y), expected)
    assert eo(logits, y).shape == (2, 3)
    # Inflating the logits cannot push the adversary's inputs outside [0, 1].
    assert float(dp.inputs(1e4 * logits, y).detach().max()) <= 1.0


def test_bad_form_is_refused():
    with pytest.raises(HparamError, match="hparam 'form' takes one of"):
        get_method("adv-debias")({"form": "eopp"})


# --- the group gets harder to predict ------------------------------------------

def group_readable_task(label_depends_on_group: bool, seed: int = 0):
    """make_task rows where two features reveal the group and the label is (or is not) tied to the group."""
    task = make_task(n=1200, seed=seed)
    rng = np.random.default_rng(seed)
    x = task.x.copy()
    sign = 2.0 * task.group - 1.0
    x[:, 2] += 1.5 * sign
    x[:, 3] += 1.5 * sign
    logit = x[:, 0] + 0.5 * x[:, 1] + (sign if label_depends_on_group else 0.0)
    y = (logit + 0.3 * rng.normal(size=len(x)) > 0).astype(np.int64)
    return replace(task, x=x, y=y)


def probe_accuracy(features: np.ndarray, task) -> float:
    """How well a logistic regression fit on validation rows reads the group on test rows."""
    val, test = task.indices("val"), task.indices("test")
    clf = LogisticRegression(max_iter=2000).fit(features[val], task.group[val])
    return float(clf.score(features[test], task.group[test]))


def fitted(name: str, task, **hp):
    pred = get_method(name)({**FAST, **hp}).fit(task, FitContext(seed=0))
    return pred.model.eval()


def test_adv_rep_hides_the_group_in_the_representation():
    task = group_readable_task(label_depends_on_group=False)
    x = torch.from_numpy(task.x)
    erm_model = fitted("erm", task, epochs=40, lr=1e-2)
    adv_model = fitted("adv-rep", task, epochs=40, lr=1e-2, adv_weight=3.0)
    with torch.no_grad():
        erm, adv = erm_model.backbone(x).numpy(), adv_model.backbone(x).numpy()
    erm_probe, adv_probe = probe_accuracy(erm, task), probe_accuracy(adv, task)
    assert erm_probe > 0.85  # the group is readable from ERM's features
    assert adv_probe < erm_probe - 0.05, (erm_probe, adv_probe)


def test_adv_debias_hides_the_group_in_the_output():
    # The label depends on the group, so ERM's output reveals the group; the debiased output should not.
    task = group_readable_task(label_depends_on_group=True)
    x = torch.from_numpy(task.x)
    erm_model = fitted("erm", task, epochs=20)
    adv_model = fitted("adv-debias", task, epochs=20, alpha=1.0)
    with torch.no_grad():
        erm_out, adv_out = erm_model(x), adv_model(x)
    margin = lambda out: (out[:, 1:] - out[:, :1]).numpy()  # noqa: E731
    erm_probe, adv_probe = probe_accuracy(margin(erm_out), task), probe_accuracy(margin(adv_out), task)
    assert erm_probe > 0.75
    assert adv_probe < erm_probe - 0.15, (erm_probe, adv_probe)
    # Demographic parity difference of the predictions shrinks too.
    test = task.indices("test")

    def dp_diff(out):
        pos, g = (out[test, 1] > out[test, 0]).numpy(), task.group[test]
        return abs(pos[g == 0].mean() - pos[g == 1].mean())

    assert dp_diff(adv_out) < dp_diff(erm_out) / 2, (dp_diff(erm_out), dp_diff(adv_out))


@pytest.mark.parametrize("name, hp", [("adv-debias", {"form": "eodds"}), ("adv-debias", {"form": "dp"}),
                                      ("adv-rep", {"adv_ramp": True})])
def test_adversarial_methods_train_on_images(name, hp):
    task = make_task("image", n=120, n_groups=3, num_classes=3)
    method = get_method(name)({"backbone": "cnn", "batch_size": 16, "epochs": 2, **hp})
    assert method.candidates == ("model",)
    proba = method.fit(task, FitContext()).predict_proba(task, task.indices("test"))["model"]
    assert proba.shape == (len(task.indices("test")), 3)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)


def test_adv_rep_ramp_raises_the_weight_over_training():
    task = make_task(n=64)
    method = get_method("adv-rep")({**FAST, "adv_weight": 4.0, "adv_ramp": True, "epochs": 10})
    model = method.build_model(task)
    weights = []
    for epoch in range(10):
        method.on_epoch_start(model, epoch)
        weights.append(model.reversal.weight)
    assert weights[0] == 0.0 and all(a < b for a, b in zip(weights, weights[1:])) and weights[-1] < 4.0
