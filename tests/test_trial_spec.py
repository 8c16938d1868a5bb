"""The one trial spec: resolved once in the driver, a plain dict to the worker and back, unknown keys refused."""

from __future__ import annotations

import json

import pytest

from noharm.bench import spec as spec_module
from noharm.bench import trial as trial_module
from noharm.bench.errors import ConfigError
from noharm.bench.spec import FROM_DATASET, FROM_METHOD, FROM_SET, TrialSpec
from noharm.bench.sweep.suite import parse_suite

pytestmark = pytest.mark.filterwarnings("ignore")

DIGITS_SUITE = {"name": "s", "datasets": [{"name": "digits-shift", "attributes": ["style"],
                                           "options": {"image_size": 16},
                                           "hparams": {"backbone": "cnn", "epochs": 1, "batch_size": 256}}],
                "methods": ["erm"], "seeds": [0, 1], "search": {"trials": 2}}


def german_spec(**changes):
    return TrialSpec.resolve(**{"dataset": "german", "attribute": "sex", "method": "fairsde", "seed": 3,
                                "hparams": {"lr": "0.01"}, "dataset_options": {"val_fraction": 0.25},
                                "objective": "val/worst_group_auc", "selectors": ("greedy",), **changes})


def test_resolve_records_every_value_and_its_source():
    spec = german_spec()
    assert spec.hparams["lr"] == 0.01  # cast from the text `--set` gives
    assert spec.sources["lr"] == FROM_SET
    assert (spec.hparams["epochs"], spec.sources["epochs"]) == (30, FROM_DATASET)  # german's declared budget
    assert spec.sources["weight_decay"] == FROM_METHOD
    assert spec.set_hparams == {"lr": 0.01}
    assert spec.budget == {"epochs": {"value": 30, "source": FROM_DATASET},
                           "batch_size": {"value": 32, "source": FROM_DATASET}}


def test_spec_round_trips_through_a_plain_json_dict():
    spec = german_spec()
    data = json.loads(json.dumps(spec.to_dict()))
    again = TrialSpec.from_dict(data)
    assert again == spec and again.selectors == ("greedy",) and again.to_dict() == spec.to_dict()


def test_sweep_job_round_trips_through_a_plain_dict():
    from noharm.bench.sweep.searcher import SweepSearcher
    from noharm.bench.sweep.trials import Job

    searcher = SweepSearcher(parse_suite(DIGITS_SUITE), {}, {})
    config = searcher.suggest("t1")
    assert set(config) == {"job"} and isinstance(config["job"]["trial"], dict)  # what Ray carries
    job = Job.from_dict(json.loads(json.dumps(config["job"])))
    assert job == searcher.live["t1"] and job.trial.hparams["epochs"] == 1 and job.tags["search_trial"] == 0


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3}, "trial spec: unknown key(s) 'epochs'; valid keys: attribute, channels_last"),
    ({"hparams": {"lr": 0.01}}, "'batch_size', 'center_negatives', "),
    ({"hparams_extra": 1}, "unknown key(s) 'hparams_extra'"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"precision": "int8"}, "unknown precision 'int8'"),
    ({"method": "no-such-method"}, "unknown method 'no-such-method'"),
])
def test_from_dict_refuses_a_bad_spec_with_one_line(change, message):
    data = {**german_spec().to_dict(), **change}
    with pytest.raises(ConfigError) as err:
        TrialSpec.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_from_dict_refuses_an_unknown_hparam_a_bad_value_and_missing_keys():
    data = german_spec().to_dict()
    with pytest.raises(ConfigError, match="'momentum_typo' unknown to method 'fairsde'"):
        TrialSpec.from_dict({**data, "hparams": {**data["hparams"], "momentum_typo": 0.9},
                             "sources": {**data["sources"], "momentum_typo": FROM_SET}})
    with pytest.raises(ConfigError, match="epochs"):
        TrialSpec.from_dict({**data, "hparams": {**data["hparams"], "epochs": 0}})
    with pytest.raises(ConfigError, match="sources must name every hparam"):
        TrialSpec.from_dict({**data, "sources": {**data["sources"], "lr": "suite"}})
    with pytest.raises(ConfigError, match="missing key\\(s\\) 'hparams', 'sources'"):
        TrialSpec.from_dict({k: v for k, v in data.items() if k not in ("hparams", "sources")})


def test_job_refuses_unknown_keys():
    from noharm.bench.sweep.trials import Job

    job = Job(stage="evaluate", cell="c", key="k", name="n", label="l", trial=german_spec())
    with pytest.raises(ConfigError, match="sweep job: unknown key\\(s\\) 'spec'"):
        Job.from_dict({**job.to_dict(), "spec": {}})
    with pytest.raises(ConfigError, match="trial spec: unknown key"):
        Job.from_dict({**job.to_dict(), "trial": {**job.trial.to_dict(), "extra": 1}})
    with pytest.raises(ConfigError, match="needs a trial spec"):
        Job(stage="search", cell="c", key="k", name="n", label="l")


class Counting:
    """Wraps `trial_hparams` to count its calls (the real function still answers)."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_the_driver_resolves_once_per_trial_and_the_worker_never(tmp_path, monkeypatch):
    from noharm.bench.sweep.keys import trial_key
    from noharm.bench.sweep.searcher import SweepSearcher
    from noharm.bench.sweep.trials import Job, execute
    from noharm.bench.tracking import Tracker, default_uri

    counting = Counting(spec_module.trial_hparams)
    monkeypatch.setattr(spec_module, "trial_hparams", counting)
    searcher = SweepSearcher(parse_suite({**DIGITS_SUITE, "search": {"trials": 0}}), {}, {})
    assert counting.calls == 2 == len(searcher.queue)  # one resolution per trial: 2 seeds, nothing searched
    job = searcher.queue[0]
    assert trial_key(job.trial) == job.key and counting.calls == 2  # the key reads the resolved spec

    def refuse(*args, **kwargs):
        raise AssertionError("a worker resolved hyperparameters")

    monkeypatch.setattr(spec_module, "trial_hparams", refuse)
    monkeypatch.setattr(trial_module, "trial_hparams", refuse)
    tracker = Tracker.open(default_uri(tmp_path), "e")
    context = {"uri": tracker.uri, "experiment_id": tracker.experiment_id, "suite": "s", "invocation": "i",
               "git_commit": "c", "code_version": "v", "retries": 0, "device": "cpu", "keep_models": "none"}
    result = execute(Job.from_dict(job.to_dict()), context)
    assert result["failed"] == 0, result["error"]
    params = tracker.get(result["run_id"]).data.params
    assert params["epochs"] == "1" and params["trial.budget"] == "epochs=1 (set for this trial), " \
                                                               "batch_size=256 (set for this trial)"


def test_a_suite_forces_the_memory_format_of_its_image_trials_and_the_key_says_so():
    from noharm.bench.sweep import grid
    from noharm.bench.sweep.keys import trial_key
    from noharm.bench.sweep.trials import trial_params

    specs = {}
    for value in (None, "auto", "on", "off"):
        raw = dict(DIGITS_SUITE, **({} if value is None else {"channels_last": value}))
        suite = parse_suite(raw)
        cell = grid.cells(suite)[0]
        specs[value] = grid.trial_spec(suite, cell, {}, 0)
    assert [specs[v].channels_last for v in (None, "auto", "on", "off")] == ["auto", "auto", "on", "off"]
    keys = {v: trial_key(s) for v, s in specs.items()}
    # `auto` (the default) keeps every existing key; a forced format is another number stream, another key.
    assert keys[None] == keys["auto"] and len({keys["auto"], keys["on"], keys["off"]}) == 3
    assert trial_params(specs["on"])["trial.channels_last"] == "on"
    # YAML reads a bare on/off as a boolean: the suite takes it as meant.
    assert parse_suite(dict(DIGITS_SUITE, channels_last=True)).channels_last == "on"
    assert parse_suite(dict(DIGITS_SUITE, channels_last=False)).channels_last == "off"
    with pytest.raises(ConfigError, match="channels_last"):
        parse_suite(dict(DIGITS_SUITE, channels_last="sideways"))
