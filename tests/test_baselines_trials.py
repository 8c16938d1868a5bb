"""Every baseline of issue 8 trains end to end through `run_trial` on both embedded datasets, and is listed by the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noharm.bench.cli import main
from noharm.bench.trial import TrialConfig, run_trial
from noharm.methods import FitContext, get_method
from tests.conftest import make_task

BASELINES = ("groupdro", "resample", "reweight", "laftr", "fscl", "fairmixup", "gapreg", "dfr", "fin", "group-threshold")
# One epoch on small settings: this checks the plumbing, not the numbers.
CHEAP = {"dfr": {"repeats": 2}}
SETTINGS = {
    "adult": ("sex", {"epochs": 1, "batch_size": 1024, "hidden": 32}, {}),
    "digits-shift": ("style", {"epochs": 1, "backbone": "cnn", "batch_size": 128}, {"image_size": 16}),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one intra-op thread avoids oversubscription on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dataset", sorted(SETTINGS))
@pytest.mark.parametrize("method", BASELINES)
def test_trains_through_run_trial(method, dataset):
    attribute, hparams, options = SETTINGS[dataset]
    cfg = TrialConfig(dataset=dataset, attribute=attribute, method=method, seed=0,
                      hparams={**hparams, **CHEAP.get(method, {})}, dataset_options=options)
    result = run_trial(cfg, device="cpu")
    for cand in get_method(method).candidates:
        for key in ("acc", "acc/worst", "auc", "dp_diff"):
            value = result.metrics[f"test/{cand}/{key}"]
            assert math.isfinite(value), f"{method} on {dataset}: test/{cand}/{key} = {value}"
        assert 0.0 <= result.metrics[f"test/{cand}/acc"] <= 1.0
    assert result.cost["epochs_run"] == 1


@pytest.mark.parametrize("method", BASELINES)
def test_same_seed_same_numbers(method):
    task = make_task("image", n=120)
    hp = {"epochs": 1, "backbone": "cnn", "batch_size": 32, **CHEAP.get(method, {})}
    runs = [get_method(method)(hp).fit(task, FitContext(seed=4)).predict_proba(task, np.arange(120)) for _ in range(2)]
    for cand in runs[0]:
        assert np.array_equal(runs[0][cand], runs[1][cand])


def test_methods_list_shows_every_baseline(capsys):
    assert main(["methods", "list", "-v"]) == 0
    out = capsys.readouterr().out
    blocks = {}
    for line in out.splitlines():
        if line and not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = [line]
        elif line.strip():
            blocks[name].append(line.strip())
    for method in BASELINES:
        cls = get_method(method)
        assert method in blocks, f"{method} missing from `noharm methods list`"
        text = "\n".join(blocks[method])
        assert cls.description and cls.description in blocks[method][0]
        assert "\n" not in cls.description
        assert f"paper: {cls.paper}" in text
        for hp, param in cls.hparams.items():
            assert f"{hp}: {param.describe()}" in text
