"""A fixed, small MLflow store in the sweep's layout (built here, numbers deterministic), and tests of
`analysis.collect` on it. Other analysis tests import `analysis_store` / `analysis_report` from here.

Layout mirrored from README.md, "What a sweep leaves in MLflow": runs tagged noharm.stage / dataset / target / attribute /
method / seed / candidates / groups (/ strategy, composed_from); metrics `{split}/{candidate}/{metric}`
with forbidden characters replaced by `_`; stress runs with a `stress.parquet` artifact.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SEEDS = (0, 1, 2)
# (dataset, target, attribute, groups): the second has names with characters MLflow forbids.
TASKS = (
    ("adult", "income", "sex", ("Female", "Male")),
    ("digits-shift", "binary", "style+ink", ("standard x (dark)", "standard x light", "shifted x (dark)",
                                              "shifted x light")),
)
CANDIDATES = {"erm": ("model",), "groupdro": ("model",), "decoupled": ("experts",),
              "fairsde": ("experts", "centers", "routed"), "fairsde-no-disc": ("experts", "centers", "routed")}
COMPOSED = ("decoupled", "fairsde", "fairsde-no-disc")
STRATEGIES = ("greedy", "ip-gap")
# groupdro's search on adult/sex (the fixture's one searched cell): (trial, lr, eta, objective); trial 2 is best.
SEARCH_SPACE = {"lr": {"kind": "log-uniform", "low": 1e-05, "high": 0.1},
                "eta": {"kind": "log-uniform", "low": 0.001, "high": 0.1}}
SEARCH_TRIALS = ((0, 0.001, 0.01, 0.871), (1, 0.0003, 0.05, 0.862), (2, 0.004, 0.002, 0.893))
# Test-accuracy effect against ERM per (method, candidate): (mean shift per group index, noise sd over seeds).
# groupdro hurts the second group consistently (harm with confidence); decoupled hurts the first noisily
# (below ERM on average but not with confidence); fairsde-no-disc hurts the first group consistently.
EFFECTS = {
    ("groupdro", "model"): ((0.01, -0.03, 0.0, -0.03), 0.003),
    ("decoupled", "experts"): ((-0.01, 0.005, 0.004, -0.002), 0.02),
    ("fairsde", "experts"): ((0.012, 0.01, 0.008, 0.006), 0.004),
    ("fairsde", "centers"): ((-0.004, 0.002, -0.001, 0.003), 0.01),
    ("fairsde", "routed"): ((0.011, 0.009, 0.007, 0.006), 0.004),
    ("fairsde-no-disc", "experts"): ((-0.02, 0.004, -0.015, 0.002), 0.002),
    ("fairsde-no-disc", "centers"): ((-0.006, 0.001, 0.0, 0.0), 0.01),
    ("fairsde-no-disc", "routed"): ((-0.018, 0.004, -0.012, 0.001), 0.003),
}
_FORBIDDEN = re.compile(r"[^\w.\- :/]")


def sanitise(name: str) -> str:
    """What the sweep does to a metric name before MLflow sees it (README.md, "What a sweep leaves in MLflow")."""
    return "/".join("_" if p in ("", ".", "..") else p for p in _FORBIDDEN.sub("_", name).split("/"))


def _noise(key: str, sd: float) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(key.encode())).normal(0.0, sd, len(SEEDS))


@dataclass
class Truth:
    """The numbers written to the store: test values per (task index, entry, metric, group name) per seed."""

    values: dict[tuple[int, str, str, str], np.ndarray] = field(default_factory=dict)
    run_ids: dict[tuple[int, str, int], str] = field(default_factory=dict)


def group_values(task: int, method: str, candidate: str, metric: str) -> np.ndarray:
    """[seeds, groups] test values of one candidate; ERM's are the baseline of every other."""
    groups = TASKS[task][3]
    base = np.array([0.80, 0.86, 0.74, 0.83][: len(groups)]) if metric == "acc" else \
        np.array([0.88, 0.91, 0.84, 0.90][: len(groups)])
    erm = base[None, :] + np.stack([_noise(f"{task}/erm/{metric}/{g}", 0.004) for g in groups], axis=1)
    if method == "erm":
        return erm
    if candidate.startswith("selected:"):
        # A selector keeps the expert where it beat ERM on this seed (as if validation agreed), else ERM.
        expert = group_values(task, method, "experts", metric)
        return np.maximum(expert, erm) if candidate == "selected:greedy" else np.where(expert >= erm + 0.005, expert, erm)
    shift, sd = EFFECTS[(method, candidate)]
    scale = 1.0 if metric == "acc" else 0.8
    noise = np.stack([_noise(f"{task}/{method}/{candidate}/{metric}/{g}", sd) for g in groups], axis=1)
    return erm + scale * np.array(shift[: len(groups)])[None, :] + noise


def _candidate_metrics(task: int, method: str, candidate: str, seed_index: int, truth: Truth,
                       entry: str) -> dict[str, float]:
    groups = TASKS[task][3]
    out: dict[str, float] = {}
    for metric in ("acc", "auc"):
        test = group_values(task, method, candidate, metric)[seed_index]
        for split, vals in (("test", test), ("val", test + 0.002)):
            for g, v in zip(groups, vals):
                out[f"{split}/{candidate}/{metric}/group:{g}"] = float(v)
            out[f"{split}/{candidate}/{metric}"] = float(np.mean(vals))
            out[f"{split}/{candidate}/{metric}/worst"] = float(vals.min())
            out[f"{split}/{candidate}/{metric}/gap"] = float(vals.max() - vals.min())
        for g in groups:
            truth.values.setdefault((task, entry, metric, g), np.zeros(len(SEEDS)))[seed_index] = \
                out[f"test/{candidate}/{metric}/group:{g}"]
    for split in ("test", "val"):
        acc = np.array([out[f"{split}/{candidate}/acc/group:{g}"] for g in groups])
        gap = float(acc.max() - acc.min())
        # Parity differences and calibration error that move with the accuracy gap (lower is better).
        fair = {"dp_diff": 1.5 * gap + 0.02, "eopp_diff": 1.2 * gap, "eodds_diff": 1.3 * gap + 0.01,
                "ece": 0.03 + 0.1 * (1 - float(acc.mean()))}
        for metric, value in fair.items():
            out[f"{split}/{candidate}/{metric}"] = value
            if split == "test":
                truth.values.setdefault((task, entry, metric, "overall"), np.zeros(len(SEEDS)))[seed_index] = value
    for g in groups:
        out[f"test/{candidate}/n/group:{g}"] = 100.0
    return out


def _cost(method: str, task: int, seed: int) -> dict[str, float]:
    k = sorted(CANDIDATES).index(method)
    return {"cost/wall_seconds": 2.0 + k + 0.25 * seed + task, "cost/fit_seconds": 1.5 + k + 0.25 * seed,
            "cost/train_samples_per_second": 1000.0 * (k + 1) + 10 * seed, "cost/peak_memory_mb": 200.0 + 10 * k}


def diag_metrics(method: str, groups: tuple[str, ...], seed_index: int) -> dict[str, float]:
    """Failure signatures of an experts method: fairsde-no-disc's first group predicts one class on seed 0."""
    flagged = method == "fairsde-no-disc" and seed_index == 0
    out = {}
    for i, g in enumerate(groups):
        bad = flagged and i == 0
        out[f"diag/experts/bal_acc/group:{g}"] = 0.5 if bad else 0.9 - 0.01 * i - 0.005 * seed_index
        out[f"diag/experts/majority_share/group:{g}"] = 1.0 if bad else 0.6
    out["diag/experts/flagged_groups"] = float(flagged)
    return out


def _log(client, exp_id: str, name: str, tags: dict, metrics: dict, status: str = "FINISHED",
         artifact: Path | None = None, params: dict | None = None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(exp_id, run_name=name)
    items = [Metric(sanitise(k), v, 0, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run.info.run_id, metrics=items[i:i + 1000])
    client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()],
                     params=[Param(k, str(v)) for k, v in (params or {"lr": "0.001"}).items()])
    if artifact is not None:
        client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def stress_rows(method: str, seed: int, scenario: str, severities: tuple[float, ...]) -> pd.DataFrame:
    rows = []
    for i, sev in enumerate(severities):
        for j, strategy in enumerate(("greedy", "ip-gap", "safe")):
            rate = min(1.0, 0.05 * (i + 1) * (3 - j) / 3 + 0.01 * seed)
            rows.append({"dataset": "adult", "attribute": "sex", "method": method, "seed": seed, "scenario": scenario,
                         "severity": float(sev), "strategy": strategy, "harm_rate": rate, "max_harm": rate / 10,
                         "gap": 0.05 + 0.01 * i, "worst_group": 0.8 - 0.01 * i, "changed_rate": 0.1 * i,
                         "repeats": 50, "harm_rate_low": max(0.0, rate - 0.02), "harm_rate_high": rate + 0.02})
    return pd.DataFrame(rows)


def build_store(root: Path, experiment: str = "fixed", stress: bool = True) -> tuple[str, Truth]:
    """Write the fixed store under `root` (sqlite + local artifacts); returns (tracking URI, truth)."""
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(root / 'mlflow.db').absolute()}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").absolute().as_uri())
    truth = Truth()
    for t, (dataset, target, attribute, groups) in enumerate(TASKS):
        base = {"noharm.suite": experiment, "noharm.dataset": dataset, "noharm.target": target,
                "noharm.attribute": attribute, "noharm.groups": json.dumps(list(groups)),
                "noharm.git_commit": "0123abc"}
        for si, seed in enumerate(SEEDS):
            for method, cands in CANDIDATES.items():
                metrics = {}
                for c in cands:
                    entry = method if c == cands[0] else f"{method} [{c}]"
                    metrics.update(_candidate_metrics(t, method, c, si, truth, entry))
                metrics.update(_cost(method, t, seed))
                if cands[0] == "experts":
                    metrics.update(diag_metrics(method, groups, si))
                tags = {**base, "noharm.stage": "evaluate", "noharm.method": method, "noharm.seed": seed,
                        "noharm.candidates": ",".join(cands), "noharm.key": f"{t}{method}{seed}"}
                params = None
                if method == "groupdro" and t == 0:  # settings chosen by the search below
                    tags.update({"noharm.search_space": json.dumps(SEARCH_SPACE), "noharm.search_cell":
                                 f"{dataset}/{attribute}/groupdro"})
                    params = {"lr": "0.004", "eta": "0.002", "trial.objective": "val/worst_group_auc"}
                truth.run_ids[(t, method, seed)] = _log(client, exp_id, f"{method} s{seed}", tags, metrics,
                                                        params=params)
            for method in COMPOSED:
                for strategy in STRATEGIES:
                    sel = f"selected:{strategy}"
                    metrics = {**_candidate_metrics(t, method, "experts", si, Truth(), ""),
                               **_candidate_metrics(t, "erm", "erm", si, Truth(), ""),
                               **_candidate_metrics(t, method, sel, si, truth, f"{method} + {strategy}")}
                    metrics["selection/n_experts"] = 1.0
                    for g in groups:
                        metrics[f"selection/use_expert/group:{g}"] = float(g == groups[0])
                    tags = {**base, "noharm.stage": "compose", "noharm.method": method, "noharm.seed": seed,
                            "noharm.strategy": strategy, "noharm.candidates": f"experts,erm,{sel}",
                            "noharm.composed_from": f"{truth.run_ids[(t, method, seed)]},{truth.run_ids[(t, 'erm', seed)]}",
                            "noharm.key": f"{t}{method}{strategy}{seed}"}
                    _log(client, exp_id, f"compose {method} {strategy} s{seed}", tags, metrics)
    first = {"noharm.dataset": "adult", "noharm.target": "income", "noharm.attribute": "sex",
             "noharm.groups": json.dumps(["Female", "Male"])}
    # Search runs (never tabulated) with absurd test numbers, and a FAILED evaluate run (counted, not read).
    for trial, lr, eta, objective in SEARCH_TRIALS:
        _log(client, exp_id, f"search {trial}",
             {**first, "noharm.stage": "search", "noharm.method": "groupdro", "noharm.seed": 0,
              "noharm.candidates": "model", "noharm.search_trial": trial,
              "noharm.search_space": json.dumps(SEARCH_SPACE), "noharm.search_cell": "adult/sex/groupdro"},
             {"test/model/acc": 0.0, "test/model/acc/worst": 0.0, "objective": objective},
             params={"lr": str(lr), "eta": str(eta), "trial.objective": "val/worst_group_auc"})
    _log(client, exp_id, "failed", {**first, "noharm.stage": "evaluate", "noharm.method": "fin", "noharm.seed": 0,
                                    "noharm.candidates": "model"}, {}, status="FAILED")
    if stress:
        folder = root / "stress"
        for seed in (0, 1):
            for scenario, sev in (("val-size", (1000.0, 100.0, 20.0)), ("label-shift", (0.0, 0.2))):
                path = folder / f"{scenario}-{seed}" / "stress.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                stress_rows("fairsde", seed, scenario, sev).to_parquet(path, index=False)
                _log(client, exp_id, f"stress {scenario} s{seed}",
                     {**first, "noharm.stage": "stress", "noharm.method": "fairsde", "noharm.seed": seed,
                      "noharm.scenario": scenario}, {"stress/greedy/harm_rate_mean": 0.1}, artifact=path)
        _log(client, exp_id, "stress blind", {**first, "noharm.stage": "stress", "noharm.method": "fairsde",
                                              "noharm.seed": 0, "noharm.scenario": "blind"}, {})
    return uri, truth


# Other test modules import these fixtures, and pytest then keeps one definition (and one session
# cache) per module; this process-wide cache makes every module share one store and one report.
_ONCE: dict[str, object] = {}


def _once(key: str, make):
    if key not in _ONCE:
        _ONCE[key] = make()
    return _ONCE[key]


@pytest.fixture(scope="session")
def analysis_store(tmp_path_factory):
    """(tracking URI, Truth) of the fixed store, built once per test process."""
    return _once("store", lambda: build_store(tmp_path_factory.mktemp("analysis-store")))


@pytest.fixture(scope="session")
def analysis_report(analysis_store, tmp_path_factory):
    """The report of the fixed store, written once per test process: (Report, out folder)."""
    from noharm.analysis.report import write_report

    def make():
        out = tmp_path_factory.mktemp("analysis-report") / "report"
        return write_report("fixed", analysis_store[0], out), out

    return _once("report", make)


@pytest.fixture(scope="session")
def analysis_collection(analysis_store):
    from noharm.analysis.collect import collect

    return _once("collection", lambda: collect("fixed", analysis_store[0]))


def new_experiment(uri: str, prefix: str) -> tuple[object, str, str]:
    """(client, experiment id, name) of a fresh experiment in the shared store (cheaper than a new database)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = f"{prefix}-{len(client.search_experiments())}"
    return client, client.create_experiment(name), name


# ---- tests of analysis.collect ------------------------------------------------------------------
def test_tidy_table_holds_every_number_with_real_group_names(analysis_collection, analysis_store):
    from noharm.analysis.collect import TIDY_COLUMNS

    _, truth = analysis_store
    tidy = analysis_collection.tidy
    assert tuple(tidy.columns) == TIDY_COLUMNS
    assert set(tidy["stage"]) == {"evaluate", "compose"}  # search and stress runs never enter
    assert set(tidy["split"]) == {"val", "test", "cost", "selection", "diag"}
    # Group names with forbidden characters come back from the noharm.groups tag, not as `_` fragments.
    digits = tidy[tidy["dataset"] == "digits-shift"]
    assert set(digits[~digits["group"].isin(["overall", "worst", "gap"])]["group"]) == set(TASKS[1][3])
    # Every test group value equals what was written, per seed.
    t = tidy[(tidy["split"] == "test") & (tidy["entry"] != "")
             & (tidy["metric"].isin(["acc", "auc", "dp_diff", "eopp_diff", "eodds_diff", "ece"]))]
    checked = 0
    for (task, entry, metric, group), values in truth.values.items():
        d, tg, a, _ = TASKS[task]
        rows = t[(t["dataset"] == d) & (t["attribute"] == a) & (t["entry"] == entry) & (t["metric"] == metric)
                 & (t["group"] == group)].sort_values("seed")
        assert list(rows["seed"]) == list(SEEDS), (entry, group)
        np.testing.assert_allclose(rows["value"].to_numpy(), values, rtol=0, atol=1e-12)
        checked += 1
    assert checked == len(truth.values) > 100


def test_entries_primary_candidates_and_compose_copies(analysis_collection):
    tidy = analysis_collection.tidy
    test = tidy[tidy["split"] == "test"]
    fair = test[(test["method"] == "fairsde") & (test["stage"] == "evaluate")]
    assert set(fair["entry"]) == {"fairsde", "fairsde [centers]", "fairsde [routed]"}
    assert set(fair[fair["primary"]]["candidate"]) == {"experts"}
    comp = test[test["stage"] == "compose"]
    # The experts / erm copies inside compositions are kept in the tidy table but named "" (not tabulated).
    assert set(comp[comp["entry"] == ""]["candidate"]) == {"experts", "erm"}
    assert set(comp[comp["primary"]]["entry"]) == {f"{m} + {s}" for m in COMPOSED for s in STRATEGIES}
    use = tidy[(tidy["split"] == "selection") & (tidy["metric"] == "use_expert")]
    assert set(use["candidate"]) == {"selected:greedy", "selected:ip-gap"}
    cost = tidy[(tidy["split"] == "cost") & (tidy["metric"] == "wall_seconds") & (tidy["stage"] == "evaluate")]
    assert len(cost) == len(TASKS) * len(SEEDS) * len(CANDIDATES)


def test_failed_runs_are_counted_and_stress_rows_read(analysis_collection):
    col = analysis_collection
    assert any("1 FAILED run(s) ignored (evaluate: 1)" in n for n in col.notes)
    assert "fin" not in set(col.tidy["method"])
    st = col.stress
    assert len(st) == 2 * (3 + 2) * 3  # 2 seeds x (3 + 2 severities) x 3 strategies; the blind run has no rows
    assert set(st["scenario"]) == {"val-size", "label-shift"}
    assert st["run"].nunique() == 4


def test_metric_names_map_back_and_match_the_sweep_sanitiser():
    from noharm.analysis.record import metric_name as metric_fragment, parse_metric

    groups = ["standard x (dark)", "a/b", "Female x White"]
    lookup = {metric_fragment(g): g for g in groups}
    assert parse_metric("test/model/acc/group:standard x _dark_", lookup) == ("test", "model", "acc",
                                                                             "standard x (dark)")
    assert parse_metric("val/selected:ip-gap/auc/worst", lookup) == ("val", "selected:ip-gap", "auc", "worst")
    assert parse_metric("test/experts/n/group:Female x White", lookup) == ("test", "experts", "n", "Female x White")
    assert parse_metric("test/model/dp_diff", lookup) == ("test", "model", "dp_diff", "overall")
    assert parse_metric("cost/wall_seconds", lookup) == ("cost", "", "wall_seconds", "overall")
    assert parse_metric("epoch/train_loss", lookup) is None and parse_metric("objective", lookup) is None
    try:
        from noharm.analysis.record import metric_name
    except ImportError:  # the sweep's writer is optional for the analysis
        return
    for g in [*groups, "x=1", "(a), b", ".", "p+q"]:
        assert metric_fragment(g) == metric_name(g) == sanitise(g)


def test_missing_store_and_experiment_say_what_to_do(tmp_path, analysis_store):
    from noharm.analysis.collect import AnalysisError, collect

    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(AnalysisError, match="no MLflow store at .*mlflow.db.*point it at"):
        collect("fixed", f"sqlite:///{missing}")
    assert not missing.exists()  # reading must not create an empty store
    with pytest.raises(AnalysisError, match="no MLflow experiment 'nope'.*experiments there: .*fixed"):
        collect("nope", analysis_store[0])


def test_stress_artifact_without_the_agreed_columns_is_rejected(tmp_path, analysis_store):
    from noharm.analysis.collect import AnalysisError, collect

    client, exp, name = new_experiment(analysis_store[0], "bad-stress")
    path = tmp_path / "stress.parquet"
    pd.DataFrame({"scenario": ["x"], "harm_rate": [0.1]}).to_parquet(path)
    _log(client, exp, "stress", {"noharm.stage": "stress"}, {}, artifact=path)
    with pytest.raises(AnalysisError, match="stress.parquet of MLflow run .* lacks column\\(s\\) dataset"):
        collect(name, analysis_store[0])


def test_expert_signatures_and_reference_recipe(analysis_collection):
    from noharm.analysis.tables import expert_signatures, reference_text

    sig = expert_signatures(analysis_collection.tidy).set_index(["dataset", "entry"])
    for t, (dataset, _, _, groups) in enumerate(TASKS):
        # Worst group over groups, then mean over seeds, of what diag_metrics wrote.
        worst = [min(diag_metrics("fairsde", groups, si)[f"diag/experts/bal_acc/group:{g}"] for g in groups)
                 for si in range(len(SEEDS))]
        assert sig.loc[(dataset, "fairsde"), "bal_acc_worst"] == pytest.approx(np.mean(worst))
        assert (sig.loc[(dataset, "fairsde"), "flagged_runs"], sig.loc[(dataset, "fairsde"), "runs"]) == (0, 3)
        assert (sig.loc[(dataset, "fairsde-no-disc"), "flagged_runs"], sig.loc[(dataset, "decoupled"), "runs"]) == (1, 3)
        assert (dataset, "erm") not in sig.index and (dataset, "fairsde [centers]") not in sig.index
    text = reference_text(analysis_collection)
    assert "pooled ERM" in text and "adult (income) · groups by sex: lr 0.001" in text


def test_experts_taken_counts_every_compose_choice(analysis_collection):
    from noharm.analysis.tables import experts_taken

    taken = experts_taken(analysis_collection.tidy).set_index(["dataset", "strategy"])
    for dataset, _, _, groups in TASKS:
        for strategy in STRATEGIES:
            # build_store: every compose run keeps the expert for its first group only.
            n_runs = len(COMPOSED) * len(SEEDS)
            assert (taken.loc[(dataset, strategy), "experts_taken"], taken.loc[(dataset, strategy), "choices"]) == \
                (n_runs, n_runs * len(groups))
