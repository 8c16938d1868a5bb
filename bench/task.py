"""A trial's task: one dataset loaded for one seed and grouped by one attribute, as methods see it.

`run_trial` builds the task it trains on here, and the stress tests rebuild a stored run's task here, so a
restored model always scores exactly the rows, labels and groups it was trained and scored on.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from noharm.datasets import DataBundle, Grouping, GroupDataset, get_dataset
from noharm.datasets.splits import split_file_digest
from noharm.methods import TaskData


@dataclass
class LoadedTask:
    """The TaskData a method gets, with the bundle and grouping it came from (ids, counts, what was dropped)."""

    task: TaskData
    bundle: DataBundle
    grouping: Grouping
    load_seconds: float  # reading the data (decoding the images when the cache is cold)

    @property
    def sample_ids(self) -> np.ndarray:
        """str [N]: the dataset's sample id of every task row."""
        return self.bundle.table["sample_id"].to_numpy().astype(str)


def load_task(dataset: GroupDataset, attribute: str, seed: int, min_group_size: int = 10) -> LoadedTask:
    """Load `dataset` for `seed` and group its rows by `attribute` ("sex", or "sex+race" for intersections).

    Takes the dataset object, not its name, so a caller checks every option (dataset, method, hparams)
    before the load, which may take minutes.
    """
    t_load = time.perf_counter()
    bundle = dataset.load(seed)
    load_seconds = time.perf_counter() - t_load
    grouping = Grouping.from_table(bundle.table, attribute, bundle.attributes, min_group_size)
    task = TaskData(
        x=bundle.x, y=bundle.table["y"].to_numpy(np.int64), group=grouping.ids,
        split=bundle.table["split"].to_numpy(str), n_groups=grouping.n_groups,
        group_names=grouping.names, num_classes=bundle.num_classes, kind=bundle.kind,
        mean=bundle.mean, std=bundle.std, augment=bundle.augment,
    )
    return LoadedTask(task=task, bundle=bundle, grouping=grouping, load_seconds=load_seconds)


# A sweep worker runs trial after trial in one process (Tune reuses its actors), mostly on the same dataset,
# attribute and seed: it keeps the last few tasks it loaded (adult's load is ~0.5 s of a 5 s trial). Methods
# only read a task (tests/test_task_cache.py checks every registered method leaves it as loaded). Only sweep
# workers use it (`run_trial(reuse_task=True)`): a caller that swaps a dataset object under the same name
# and options (tests do) must not get another's task.
TASK_CACHE_SIZE = 4
_TASKS: OrderedDict[str, LoadedTask] = OrderedDict()


def task_cache_key(dataset_name: str, options: dict[str, Any], attribute: str, seed: int,
                   min_group_size: int) -> str:
    """What a loaded task depends on: dataset and options (a split file by its content), attribute, seed."""
    options = dict(options)
    if options.get("split_file"):
        options["split_file_sha256"] = split_file_digest(options["split_file"])
    return json.dumps([dataset_name, options, attribute, int(seed), int(min_group_size)], sort_keys=True, default=str)


def cached_load_task(dataset: GroupDataset, name: str, options: dict[str, Any], attribute: str, seed: int,
                     min_group_size: int = 10) -> LoadedTask:
    """`load_task` of `dataset` (registered as `name`, built with `options`), reusing this process's task of
    the same `task_cache_key`; a reused task reports a load time of 0 (nothing was read)."""
    key = task_cache_key(name, options, attribute, seed, min_group_size)
    if key in _TASKS:
        _TASKS.move_to_end(key)
        hit = _TASKS[key]
        return LoadedTask(task=hit.task, bundle=hit.bundle, grouping=hit.grouping, load_seconds=0.0)
    loaded = load_task(dataset, attribute, seed, min_group_size)
    _TASKS[key] = loaded
    while len(_TASKS) > TASK_CACHE_SIZE:
        _TASKS.popitem(last=False)
    return loaded


def load_run_task(config: dict[str, Any]) -> LoadedTask:
    """The task of a stored run, from its `config.json` (a `TrialSpec` as a dict)."""
    dataset = get_dataset(config["dataset"], **(config.get("dataset_options") or {}))
    return load_task(dataset, config["attribute"], int(config.get("seed", 0)), int(config.get("min_group_size", 10)))
