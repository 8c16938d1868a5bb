"""Natural shift in a sweep: flipping the labels of a shift split changes no search, setting, epoch or selection;
compositions score the shift split with the choice made on in-domain validation."""

from __future__ import annotations

import pytest

from tests.plugins import write_suite
from tests.test_sweep import ray_session, tracker_of  # noqa: F401  (one local Ray with the testkit plugin)

pytestmark = pytest.mark.filterwarnings("ignore")
SHIFT = "shift:c"


def run_sites(tmp, flip: str):
    """tiny-sites with site c held out (`shift: site:c`), ERM + group-models, 2 seeds, 2 search trials."""
    from noharm.bench.sweep.run import run_suite
    from noharm.bench.sweep.suite import load_suite

    tmp.mkdir()
    path = write_suite(tmp / "sites.yaml", name="sites", seeds=[0, 1], methods=["erm", "group-models"],
                       hparams={"epochs": 4, "hidden": 16, "batch_size": 64},
                       datasets=[{"name": "tiny-sites", "attributes": ["side"], "shift": "site:c",
                                  "options": {"flip_site": flip}}],
                       search={"trials": 2, "objective": "val/worst_group_acc"},
                       selectors=["greedy", "ip-gap"], max_concurrent=2)
    outcome = run_suite(load_suite(path), tmp / "out", quiet=True)
    assert outcome.ok, outcome.failures
    return tracker_of(outcome)


@pytest.fixture(scope="module")
def two_sweeps(ray_session, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("sites")
    return run_sites(tmp / "clean", ""), run_sites(tmp / "flipped", "c")


def index(tracker, stage):
    """(method, seed, strategy or search trial) -> run."""
    out = {}
    for run in tracker.runs(suite="sites", stage=stage):
        t = run.data.tags
        out[(t["noharm.method"], t["noharm.seed"], t.get("noharm.strategy", t.get("noharm.search_trial", "")))] = run
    return out


def in_domain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(("shift:", "cost/"))}


def test_no_search_setting_epoch_or_selection_reads_the_shift_split(two_sweeps):
    clean, flipped = two_sweeps
    for stage in ("search", "evaluate", "compose"):
        a, b = index(clean, stage), index(flipped, stage)
        assert a.keys() == b.keys() and len(a) == {"search": 4, "evaluate": 4, "compose": 4}[stage]
        for key, run in a.items():
            other = b[key]
            params = {k: v for k, v in run.data.params.items() if k != "dataset.flip_site"}
            assert params == {k: v for k, v in other.data.params.items() if k != "dataset.flip_site"}, key
            assert in_domain(run.data.metrics) == in_domain(other.data.metrics), key
            if stage != "compose":  # every epoch's validation objective: what early stopping chose from
                names = [k for k in run.data.metrics if k.startswith("epoch/val_objective")]
                assert names, key
                for name in names:
                    history = [(m.step, m.value) for m in clean.client.get_metric_history(run.info.run_id, name)]
                    assert history == [(m.step, m.value) for m in flipped.client.get_metric_history(
                        other.info.run_id, name)], (key, name)
    # The flip did reach the shift split: every run's accuracy there is the complement.
    for key, run in index(clean, "evaluate").items():
        cand = "model" if key[0] == "erm" else "experts"
        acc = run.data.metrics[f"{SHIFT}/{cand}/acc"]
        assert acc + index(flipped, "evaluate")[key].data.metrics[f"{SHIFT}/{cand}/acc"] == pytest.approx(1.0)


def test_compositions_judge_the_in_domain_choice_on_the_shift_split(two_sweeps):
    tracker = two_sweeps[0]
    evaluate = index(tracker, "evaluate")
    for (method, seed, strategy), run in index(tracker, "compose").items():
        m = run.data.metrics
        for group in ("left", "right"):
            use = m[f"selection/use_expert/group:{group}"]
            source = evaluate[("group-models", seed, "")] if use else evaluate[("erm", seed, "")]
            cand = "experts" if use else "model"
            assert m[f"{SHIFT}/selected:{strategy}/acc/group:{group}"] == pytest.approx(
                source.data.metrics[f"{SHIFT}/{cand}/acc/group:{group}"])


def test_the_report_has_the_natural_shift_table_of_the_store(two_sweeps, tmp_path):
    import pandas as pd

    from noharm.analysis.report import write_report

    tracker = two_sweeps[0]
    report = write_report("sites", tracker.uri, tmp_path / "report")
    assert (tmp_path / "report" / "tables" / "shift.md").is_file()
    assert (tmp_path / "report" / "plots" / "shift-tiny-sites-label-side-c.png").is_file()
    data = pd.read_csv(tmp_path / "report" / "tables" / "shift.csv", comment="#")
    evaluate = index(tracker, "evaluate")
    for strategy in ("greedy", "ip-gap"):
        runs = [(seed, r) for (m, seed, s), r in index(tracker, "compose").items() if s == strategy]
        for group in ("left", "right"):
            kept = [seed for seed, r in runs if r.data.metrics[f"selection/use_expert/group:{group}"] == 1.0]
            lost = [seed for seed in kept if evaluate[("group-models", seed, "")].data.metrics[
                f"{SHIFT}/experts/acc/group:{group}"] < evaluate[("erm", seed, "")].data.metrics[
                f"{SHIFT}/model/acc/group:{group}"]]
            row = data[(data["entry"] == f"group-models + {strategy}") & (data["group"] == group)].iloc[0]
            assert (row["kept_runs"], row["lost_runs"]) == (len(kept), len(lost)), (strategy, group)
    assert "Natural shift" in (tmp_path / "report" / "README.md").read_text()
    assert report.paths
