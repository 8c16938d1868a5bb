"""Shared fixtures: tiny tasks that train in a second, and a quiet, local-only environment."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# Quiet, loopback-only, self-contained runs (see README, "Ray and MLflow in tests").
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

# Tiny test models run far faster on one thread than on contended OpenMP teams
# (measured: 0.4 s vs 16-65 s on a loaded 2-core machine); pytest-xdist uses the other core.
torch.set_num_threads(1)


def make_task(kind: str = "tabular", n: int = 400, n_groups: int = 2, num_classes: int = 2, seed: int = 0,
              dim: int = 8, image_size: int = 8):
    """A small synthetic TaskData whose label depends on the group (so experts can beat pooled models)."""
    from noharm.methods.base import TaskData

    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n)
    if kind == "tabular":
        x = rng.normal(size=(n, dim)).astype(np.float32)
        # The sign of the informative direction flips with the group.
        direction = np.where(group % 2 == 0, 1.0, -1.0)
        logit = direction * x[:, 0] + 0.5 * x[:, 1]
    else:
        x = rng.integers(0, 256, size=(n, 3, image_size, image_size), dtype=np.uint8)
        bright = x[:, 0].reshape(n, -1).mean(axis=1) / 255.0 - 0.5
        logit = np.where(group % 2 == 0, 1.0, -1.0) * bright * 50
    if num_classes == 2:
        y = (logit + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    else:
        y = np.digitize(logit, np.quantile(logit, np.linspace(0, 1, num_classes + 1)[1:-1])).astype(np.int64)
    split = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    return TaskData(
        x=x, y=y, group=group.astype(np.int64), split=split, n_groups=n_groups,
        group_names=tuple(f"g{i}" for i in range(n_groups)), num_classes=num_classes, kind=kind,
    )


@pytest.fixture
def tabular_task():
    return make_task("tabular")


@pytest.fixture
def image_task():
    return make_task("image", n=240)
