"""A worker's task cache: trials reuse a loaded task only when nothing that shapes it differs, and no method
changes the task it is handed (so a reused task gives the numbers a fresh load gives)."""

import numpy as np
import pandas as pd
import pytest

from noharm.bench import task as T
from noharm.bench.trial import TrialConfig, run_trial
from noharm.datasets import get_dataset
from noharm.methods import METHODS, get_method


@pytest.fixture(autouse=True)
def empty_cache():
    T._TASKS.clear()
    yield
    T._TASKS.clear()


def _snapshot(loaded: T.LoadedTask) -> dict:
    t = loaded.task
    return {"x": np.array(t.x, copy=True), "y": t.y.copy(), "group": t.group.copy(), "split": t.split.copy(),
            "table": loaded.bundle.table.copy(deep=True)}


def test_every_method_leaves_the_cached_task_as_loaded():
    key = T.task_cache_key("german", {}, "age", 0, 10)
    cached = T.cached_load_task(get_dataset("german"), "german", {}, "age", 0, 10)
    before = _snapshot(cached)
    ran = []
    for name in METHODS.names():
        fast = {k: v for k, v in {"epochs": 1, "patience": 1}.items() if k in get_method(name).hparams}
        result = run_trial(TrialConfig(dataset="german", attribute="age", method=name, seed=0, hparams=fast),
                           device="cpu", reuse_task=True)
        accs = [v for k, v in result.metrics.items() if k.startswith("test/") and k.endswith("/acc")]
        assert accs and min(accs) > 0, name  # it trained and scored on the cached task
        ran.append(name)
    assert len(ran) == len(METHODS.names()) >= 20
    assert list(T._TASKS) == [key]  # every trial was served from the one cached task
    after = _snapshot(T._TASKS[key])
    fresh = _snapshot(T.load_task(get_dataset("german"), "age", 0, 10))
    for name in ("x", "y", "group", "split"):
        assert np.array_equal(after[name], before[name]) and np.array_equal(after[name], fresh[name]), name
    pd.testing.assert_frame_equal(after["table"], before["table"])
    pd.testing.assert_frame_equal(after["table"], fresh["table"])


def test_a_reused_task_gives_the_numbers_of_a_fresh_load():
    cfg = TrialConfig(dataset="german", attribute="age", method="fairsde", seed=1, hparams={"epochs": 2})
    first = run_trial(cfg, device="cpu", reuse_task=True)
    again = run_trial(cfg, device="cpu", reuse_task=True)  # served from the cache
    assert len(T._TASKS) == 1 and first.cost["load_seconds"] > 0 and again.cost["load_seconds"] == 0.0
    T._TASKS.clear()
    fresh = run_trial(cfg, device="cpu")  # loaded again, and not kept: only sweep workers reuse tasks
    assert again.metrics == first.metrics == fresh.metrics
    assert fresh.cost["load_seconds"] > 0 and not T._TASKS


def test_the_key_separates_what_shapes_a_task(tmp_path):
    base = T.task_cache_key("adult", {"target": "income"}, "sex", 0, 10)
    assert base == T.task_cache_key("adult", {"target": "income"}, "sex", 0, 10)
    others = {T.task_cache_key("adult", {"target": "income"}, "race", 0, 10),
              T.task_cache_key("adult", {"target": "income"}, "sex", 1, 10),
              T.task_cache_key("adult", {"target": "income"}, "sex", 0, 20),
              T.task_cache_key("adult", {}, "sex", 0, 10),
              T.task_cache_key("german", {"target": "income"}, "sex", 0, 10)}
    assert base not in others and len(others) == 5
    # A split file counts by its content, not its path: rewritten in place, it is another task.
    split = tmp_path / "split.csv"
    split.write_text("sample_id,split\n0,train\n")
    a = T.task_cache_key("adult", {"split_file": str(split)}, "sex", 0, 10)
    split.write_text("sample_id,split\n0,test\n")
    assert T.task_cache_key("adult", {"split_file": str(split)}, "sex", 0, 10) != a


def test_the_cache_keeps_the_most_recent_tasks():
    dataset = get_dataset("german")
    keys = [T.task_cache_key("german", {}, "age", seed, 10) for seed in range(T.TASK_CACHE_SIZE + 1)]
    first = T.cached_load_task(dataset, "german", {}, "age", 0, 10)
    assert first.load_seconds > 0
    hit = T.cached_load_task(dataset, "german", {}, "age", 0, 10)
    assert hit.task is first.task and hit.load_seconds == 0.0
    for seed in range(1, len(keys)):
        T.cached_load_task(dataset, "german", {}, "age", seed, 10)
    assert keys[0] not in T._TASKS and list(T._TASKS) == keys[1:]
    # Different seeds split differently: the cache did not hand one seed's task to another.
    assert not np.array_equal(T._TASKS[keys[1]].task.split, T._TASKS[keys[2]].task.split)
