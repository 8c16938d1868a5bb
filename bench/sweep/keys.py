"""Trial keys: a stable hash of everything that determines a trial's numbers.

Two trials with the same key produce the same predictions (same code, same
seed, CPU), so a sweep skips a key that MLflow already holds as FINISHED. The
key covers dataset, attribute, method, fully resolved hyperparameters, seed,
dataset options (and the content of a `split_file`), objective, precision, minimum group size,
whether training rows are stored, a memory format forced on or off, and `CODE_VERSION`.
It leaves out what does not change numbers (suite name, output folder,
tracking URI, device choice, concurrency).
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from noharm.bench.spec import TrialSpec
from noharm.datasets.splits import split_file_digest
from noharm.settings import CHANNELS_LAST

# Bump the suffix when a change alters trial numbers without changing the package
# version (a fixed bug in a loss, a new split rule): old keys then no longer match.
KEY_SCHEMA = "trial-1"


def code_version() -> str:
    """The code-relevant version string mixed into every key."""
    try:
        pkg = version("noharm")
    except PackageNotFoundError:  # running from a source tree that is not installed
        pkg = "dev"
    return f"noharm-{pkg}/{KEY_SCHEMA}"


CODE_VERSION = code_version()


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def trial_key(cfg: TrialSpec) -> str:
    """The key of one trial. The spec's hyperparameters are resolved (set > dataset budget > method
    default), so defaults, a dataset's budget and the same values set explicitly agree; where a value
    came from (`sources`) is not hashed: it does not change the numbers."""
    payload = {
        "dataset": cfg.dataset, "attribute": cfg.attribute, "method": cfg.method,
        "hparams": cfg.hparams, "seed": int(cfg.seed), "dataset_options": cfg.dataset_options,
        "objective": cfg.objective, "precision": cfg.precision, "min_group_size": int(cfg.min_group_size),
        "version": CODE_VERSION,
    }
    # Added only when set, so keys of trials without them stay as they were.
    if cfg.dataset_options.get("split_file"):  # the split's content, not just its path
        payload["split_file_sha256"] = split_file_digest(cfg.dataset_options["split_file"])
    if cfg.train_predictions:
        payload["train_predictions"] = True
    if cfg.channels_last != CHANNELS_LAST.default:  # a forced memory format rounds differently
        payload["channels_last"] = cfg.channels_last
    return _digest(payload)


def compose_key(method_key: str, erm_key: str, strategy: str, metric: str, candidate: str) -> str:
    """The key of one composition: the two trials it reads and how it selects."""
    return _digest({"method": method_key, "erm": erm_key, "strategy": strategy, "metric": metric,
                    "candidate": candidate, "version": CODE_VERSION})
