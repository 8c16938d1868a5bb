"""How many trials run at once (from the machine unless the suite or the CLI says) and the ETA estimator."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from noharm.bench.errors import ConfigError
from noharm.bench.sweep.capacity import plan, trial_device
from noharm.bench.sweep.progress import Progress, estimate_remaining, status_line
from noharm.bench.sweep.suite import parse_suite

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("nodes, cpu, gpu, suite_max, cli_max, trials, gpu_per_trial", [
    ([(2, 0)], 1, "auto", None, None, 2, 0.0),  # this machine: 2 cores, no GPU
    ([(16, 0)], 1, "auto", None, None, 16, 0.0),  # a workstation: every core
    ([(16, 0)], 1, 0, 2, None, 2, 0.0),  # the suite's max_concurrent caps it
    ([(16, 0)], 1, 0, 2, 5, 5, 0.0),  # --max-concurrent beats the suite
    ([(2, 0)], 1, 0, None, 8, 2, 0.0),  # a limit above what fits runs what fits
    ([(16, 4)], 1, "auto", None, None, 4, 1.0),  # a GPU box: one trial per GPU
    ([(16, 4)], 1, 0, None, None, 16, 0.0),  # gpu: 0 runs CPU trials on every core
    ([(16, 1)], 1, 0.25, None, None, 4, 0.25),  # a declared fraction: four trials share the GPU
    ([(16, 1)], 1, 0.3, None, None, 3, 0.3),
    ([(3, 0), (3, 0)], 2, "auto", None, None, 2, 0.0),  # per node: 3 CPUs hold one 2-CPU trial, not 1.5
    ([(8, 2), (4, 0)], 2, "auto", None, None, 2, 1.0),  # only the GPU node can take GPU trials
    ([(4, 0)], 0.5, 0, None, None, 8, 0.0),
])
def test_plan(nodes, cpu, gpu, suite_max, cli_max, trials, gpu_per_trial):
    capacity = plan(nodes, cpu, gpu, suite_max, cli_max)
    assert (capacity.trials, capacity.gpu_per_trial) == (trials, gpu_per_trial)
    assert capacity.tune_limit == (cli_max or suite_max or trials)  # Tune's limit: a stated one, else what fits


def test_plan_says_what_it_uses():
    assert plan([(2, 0)], 1, "auto").describe() == "2 trials at a time: 2 CPUs, 1 CPU per trial, no GPU"
    assert plan([(16, 4)], 1, "auto").describe() == "4 trials at a time: 16 CPUs, 1 CPU and 1 GPU per trial, 4 GPUs"
    assert plan([(16, 0)], 1, 0, 2).describe() == ("2 trials at a time (the suite's max_concurrent 2; the machine "
                                                  "fits 16): 16 CPUs, 1 CPU per trial, no GPU")
    assert plan([(1, 0)], 1, 0, cli_max=3).describe().startswith("1 trial at a time (--max-concurrent 3;")


@pytest.mark.parametrize("nodes, cpu, gpu, fragment", [
    ([(2, 0)], 4, 0, "each trial asks for 4 CPU and 0 GPU, but no node has that much (largest: 2 CPUs, 0 GPUs)"),
    ([(8, 0)], 1, 1, "each trial asks for 1 CPU and 1 GPU"),
])
def test_plan_refuses_resources_no_node_has(nodes, cpu, gpu, fragment):
    with pytest.raises(ConfigError, match="resources: ") as err:
        plan(nodes, cpu, gpu)
    assert fragment in str(err.value)


def test_trial_device():
    assert trial_device("auto", []) == "cpu"  # a Ray trial given no GPU stays off the (visible) GPUs
    assert trial_device("auto", [0]) == "auto"
    assert trial_device("auto", None) == "auto"  # outside Ray: auto as everywhere
    assert trial_device("cuda", []) == "cuda"  # an explicit --device is kept


def test_default_suite_leaves_concurrency_to_the_machine():
    from noharm.bench.commands.bench import default_suite_path
    from noharm.bench.sweep.suite import load_suite

    suite = load_suite(default_suite_path())
    assert suite.max_concurrent is None and suite.resources.gpu == "auto" and suite.resources.cpu == 1


@pytest.mark.parametrize("gpu", ["some", -0.5, True])
def test_suite_gpu_is_a_number_or_auto(gpu):
    with pytest.raises(ConfigError, match="resources.gpu: must be a number of GPUs per trial"):
        parse_suite({"name": "t", "datasets": [{"name": "adult", "attributes": ["sex"]}], "methods": ["erm"],
                     "seeds": [0], "resources": {"gpu": gpu}})


# ---- ETA ---------------------------------------------------------------------------------------------

def test_eta_unknown_until_enough_trials_finished():
    assert estimate_remaining([], [("train", "a/x/erm")], [], 2) is None
    assert estimate_remaining([("train", "a/x/erm", 5.0)], [("train", "a/x/erm")], [], 2) is None
    assert estimate_remaining([("train", "a/x/erm", 5.0)] * 2, [("train", "a/x/erm")], [], 2) == 2.5
    assert estimate_remaining([("train", "a/x/erm", 5.0)] * 3, [], [], 4) is None  # 4 at a time: wait for 4


def test_eta_prices_each_trial_by_its_nearest_measured_group():
    done = [("train", "adult/sex/erm", 10.0), ("train", "adult/sex/erm", 14.0),
            ("train", "adult/sex/fairsde", 40.0), ("train", "digits/style/erm", 100.0),
            ("copy", "adult/sex/erm", 1.0)]
    one = lambda kind, cell: estimate_remaining(done, [(kind, cell)], [], 1)  # noqa: E731
    assert one("train", "adult/sex/erm") == 12.0  # its own cell's mean
    assert one("train", "adult/race/fairsde") == 40.0  # same method, same dataset, other attribute
    assert one("train", "celeba/hair/fairsde") == 40.0  # same method elsewhere
    assert one("train", "adult/race/groupdro") == pytest.approx(64 / 3)  # same dataset, other methods
    assert one("train", "celeba/hair/groupdro") == pytest.approx(164 / 4)  # any training trial
    assert one("copy", "digits/style/erm") == 1.0
    assert one("compose", "adult/sex/fairsde") == 1.0  # no composition yet: the shortest trial measured
    # Running trials count what they have left; the sum is shared by the trials at a time.
    assert estimate_remaining(done, [("train", "adult/sex/erm")] * 3, [("train", "adult/sex/fairsde", 30.0)], 2) \
        == (3 * 12.0 + 10.0) / 2
    assert estimate_remaining(done, [], [("train", "adult/sex/fairsde", 55.0)], 1) == 0.0  # overdue: not negative


def test_eta_matches_a_simulated_sweep():
    """Two kinds of trial on two cells, run 2 at a time: half way through, the estimate is the true rest."""
    durations = [("train", "d/a/slow", 30.0)] * 10 + [("train", "d/a/fast", 6.0)] * 10 + [("compose", "d/a/slow", 2.0)] * 10
    order = [durations[i] for k in range(10) for i in (k, 10 + k, 20 + k)]  # interleaved, as the searcher runs them
    half = len(order) // 2
    done, todo = order[:half], [(kind, cell) for kind, cell, _ in order[half:]]
    true_rest = sum(seconds for _, _, seconds in order[half:]) / 2
    assert estimate_remaining(done, todo, [], 2) == pytest.approx(true_rest)


def test_searcher_remaining_counts_every_planned_trial():
    from noharm.bench.sweep.searcher import SweepSearcher

    suite = parse_suite({"name": "s", "datasets": [{"name": "adult", "attributes": ["sex", "race"], "search": ["sex"]}],
                         "methods": ["erm", "decoupled"], "seeds": [0, 1, 2], "search": {"trials": 3},
                         "selectors": ["greedy"], "keep_models": "all"})
    searcher = SweepSearcher(suite, {}, {})
    todo, running = searcher.remaining()
    planned = sum(c.planned for c in searcher.counts.values())
    assert len(todo) == planned == 2 * 3 + 2 * 2 * 3 + 2 * 3 and running == []
    kinds = [kind for kind, _ in todo]
    assert kinds.count("copy") == 2 and kinds.count("compose") == 6  # the search seed's evaluate of each searched cell
    searcher.suggest("t1")  # handed to Tune, waiting for a free slot: still to do, not running
    assert len(searcher.remaining()[0]) == planned and searcher.counts["search"].running == 0
    searcher.trial_started("t1")
    todo, running = searcher.remaining()
    assert len(todo) == planned - 1 and [(k, c) for k, c, _ in running] == [("train", "adult/sex/decoupled")]
    assert searcher.counts["search"].running == 1
    searcher.on_trial_complete("t1", {"run_id": "r", "objective": 0.5, "failed": 0, "skipped": 0})
    assert searcher.counts["search"].running == 0 and [t[:2] for t in searcher.timings] == [("train", "adult/sex/decoupled")]


def test_progress_shows_the_eta_and_one_estimate_line(capsys):
    counts = {"search": SimpleNamespace(planned=4, done=2, skipped=0, failed=0, blocked=0, running=0, pending=2)}
    timings = []
    searcher = SimpleNamespace(counts=counts, failures=[], timings=timings,
                               remaining=lambda: ([("train", "d/a/m")] * 2, []))
    progress = Progress(searcher, interval=0, concurrency=2)
    progress.show()
    timings += [("train", "d/a/m", 600.0), ("train", "d/a/m", 500.0)]  # each worker's first: warm-up, left out
    progress.show()
    timings += [("train", "d/a/m", 60.0), ("train", "d/a/m", 120.0)]
    progress.show()
    progress.show()
    err = capsys.readouterr().err.splitlines()
    assert ", ETA –] 2 done" in err[0]
    assert err[1].startswith("estimate: about ") and "1:30 from now (2 at a time, from 4 trials so far" in err[1]
    assert ", ETA 1:30] 2 done" in err[2] and sum(line.startswith("estimate:") for line in err) == 1
    assert status_line(counts, 5, 3725.0).startswith("[ 0:05, ETA 1:02:05] ")
