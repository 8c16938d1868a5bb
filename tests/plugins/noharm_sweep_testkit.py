"""Test-only plugin for sweep tests, installed through entry points like a third-party package.

- dataset `tiny-blobs`: 600 tabular rows, attributes `side` (left / right) and `size`
  (big / small); the label's direction flips with `side`, so per-group experts help;
- method `always-fails`: a method whose `fit` raises, to test failure handling;
- method `tiny-erm`: pooled ERM with a tiny default budget (fast sweeps).
- method `slow-erm`: `tiny-erm` after a `pause` (keeps a driver busy in concurrency tests);
- dataset `tiny-sites`: 900 tabular rows from three sites (a tabular plugin, so `shift=site:c` holds a
  site out); `flip_site=c` flips the labels of that site's rows (the natural-shift leakage test).
"""

import time

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DataBundle, GroupDataset
from noharm.datasets.splits import stratified_assign
from noharm.datasets.tabular import TabularDataset, TabularRows
from noharm.methods import register_method
from noharm.methods.hparams import Float, Int, LogFloat
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod

FAIL_MESSAGE = "always-fails: this test method fails on purpose"


@register_dataset("tiny-blobs")
class TinyBlobs(GroupDataset):
    description = "600 rows of two Gaussian blobs whose direction flips with `side` (test plugin)"
    kind = "tabular"
    targets = {"label": "blob"}
    default_target = "label"
    attributes = {"side": "left / right", "size": "big / small"}

    def load(self, seed):
        rng = np.random.default_rng(0)
        n = 600
        side = rng.choice(["left", "right"], n, p=[0.7, 0.3])
        size = rng.choice(["big", "small"], n)
        x = rng.normal(size=(n, 4)).astype(np.float32)
        direction = np.where(side == "left", 1.0, -1.0)
        y = (direction * x[:, 0] + 0.3 * x[:, 1] + 0.2 * rng.normal(size=n) > 0).astype(np.int64)
        table = pd.DataFrame({"sample_id": np.arange(n).astype(str), "y": y, "side": side, "size": size})
        table.insert(1, "split", stratified_assign(table[["side", "y"]], (0.6, 0.2, 0.2), seed))
        return DataBundle(name=self.name, table=table, x=x, num_classes=2, kind="tabular",
                          class_names=["a", "b"], attributes=["side", "size"])


TINY = {**TRAINING_HPARAMS, "epochs": Int(2, low=1, high=10, search=False),
        "hidden": Int(16, low=4, high=64, search=False), "lr": LogFloat(1e-2, low=1e-3, high=1e-1)}


@register_method("tiny-erm")
class TinyERM(TorchMethod):
    description = "pooled ERM with a tiny default budget (test plugin)"
    hparams = TINY


@register_method("slow-erm")
class SlowERM(TorchMethod):
    """Tiny ERM that first waits `pause` seconds: keeps a driver busy long enough for concurrency tests."""

    description = "tiny ERM after a pause (test plugin)"
    hparams = {**TINY, "pause": Float(0.0, low=0.0, high=60.0, search=False)}

    def fit(self, task, ctx):
        time.sleep(self.hp["pause"])
        return super().fit(task, ctx)


@register_method("always-fails")
class AlwaysFails(TorchMethod):
    description = "raises in fit (test plugin)"
    hparams = TINY

    def fit(self, task, ctx):
        raise RuntimeError(FAIL_MESSAGE)


@register_dataset("tiny-sites")
class TinySites(TabularDataset):
    description = "900 rows from three sites; the label's direction flips with `side` (test plugin)"
    targets = {"label": "blob"}
    default_target = "label"
    attributes = {"side": "left / right"}
    numeric = ["x0", "x1", "x2", "x3"]
    shift_columns = {"site": "a, b or c"}
    class_names = ["a", "b"]

    def __init__(self, root=None, target=None, flip_site="", **options):
        super().__init__(root=root, target=target, **options)
        self.flip_site = str(flip_site)

    def read_rows(self):
        rng = np.random.default_rng(1)
        n = 900
        side = rng.choice(["left", "right"], n, p=[0.7, 0.3])
        site = rng.choice(["a", "b", "c"], n)
        x = rng.normal(size=(n, 4)) + (site == "c")[:, None] * 0.5  # site c: a covariate shift
        direction = np.where(side == "left", 1.0, -1.0)
        y = (direction * x[:, 0] + 0.3 * x[:, 1] + 0.2 * rng.normal(size=n) > 0).astype(np.int64)
        y = np.where(site == self.flip_site, 1 - y, y)
        table = pd.DataFrame({"sample_id": [f"r{i}" for i in range(n)], "y": y, "side": side})
        return TabularRows(table=table, features=pd.DataFrame(x, columns=self.numeric),
                           domains=pd.DataFrame({"site": site}))
