"""Third-party methods and datasets register through entry points, like an installed package would."""

import subprocess
import sys

from tests.plugin_install import env_with, install_plugin

PLUGIN = '''
import numpy as np
import pandas as pd
import torch.nn.functional as F

from noharm.datasets import register_dataset
from noharm.datasets.base import DataBundle, GroupDataset
from noharm.datasets.splits import stratified_assign
from noharm.methods import register_method
from noharm.methods.hparams import Float
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


@register_method("smoothed")
class Smoothed(TorchMethod):
    description = "ERM with label smoothing (test plugin)"
    paper = "Szegedy et al. (2016)"
    hparams = {**TRAINING_HPARAMS, "smoothing": Float(0.1, low=0.0, high=0.3)}

    def training_loss(self, model, batch):
        return F.cross_entropy(model(batch.x), batch.y, label_smoothing=self.hp["smoothing"])


@register_dataset("blobs")
class Blobs(GroupDataset):
    description = "two Gaussian blobs per group (test plugin)"
    kind = "tabular"
    targets = {"label": "blob"}
    default_target = "label"
    attributes = {"side": "left / right"}

    def load(self, seed):
        rng = np.random.default_rng(0)
        n = 600
        y = rng.integers(0, 2, n)
        side = rng.choice(["left", "right"], n)
        x = rng.normal(size=(n, 4)).astype(np.float32) + y[:, None].astype(np.float32) * 2
        table = pd.DataFrame({"sample_id": np.arange(n).astype(str), "y": y, "side": side})
        table.insert(1, "split", stratified_assign(table[["side", "y"]], (0.6, 0.2, 0.2), seed))
        return DataBundle(name=self.name, table=table, x=x, num_classes=2, kind="tabular",
                          class_names=["a", "b"], attributes=["side"])
'''


def test_entry_point_plugin_registers_method_and_dataset(tmp_path):
    site = install_plugin(
        tmp_path, "noharm_test_plugin", PLUGIN,
        {"noharm.methods": {"smoothed": "noharm_test_plugin"}, "noharm.datasets": {"blobs": "noharm_test_plugin"}},
    )
    env = env_with(site)
    listed = subprocess.run([sys.executable, "-m", "noharm.bench.cli", "methods", "list", "-v"],
                            capture_output=True, text=True, env=env, check=True)
    assert "smoothed  ERM with label smoothing (test plugin)" in listed.stdout
    assert "smoothing: float, default 0.1, searched in [0, 0.3]" in listed.stdout
    datasets = subprocess.run([sys.executable, "-m", "noharm.bench.cli", "datasets", "list"],
                              capture_output=True, text=True, env=env, check=True)
    assert "blobs  [tabular]" in datasets.stdout
    trial = subprocess.run(
        [sys.executable, "-m", "noharm.bench.cli", "trial", "--dataset", "blobs", "--attribute", "side",
         "--method", "smoothed", "--set", "epochs=10", "--set", "lr=0.01", "--set", "smoothing=0.2", "--quiet"],
        capture_output=True, text=True, env=env,
    )
    assert trial.returncode == 0, trial.stderr
    # The plugin's data is separable: the plugin method learns it.
    lines = trial.stdout.splitlines()
    acc = float(lines[lines.index(next(l for l in lines if l.startswith("test accuracy"))) + 1].split()[-1])
    auc = float(lines[lines.index(next(l for l in lines if l.startswith("test AUC"))) + 1].split()[-1])
    assert acc > 0.9 and auc > 0.95
