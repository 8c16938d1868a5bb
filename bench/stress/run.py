"""Distribution-shift stress tests of the no-harm selector: the suite file, one run pair, an MLflow experiment.

For a finished method run and the ERM run of the same dataset, attribute and
seed, every scenario of the stress suite (`bench/suites/stress.yaml`) shifts
validation and/or test, every selector chooses on the shifted validation data,
and the choice is scored against ERM on the shifted test data. Results are a
tidy table (one row per scenario x severity x selector, columns
`bench.stress.runner.COLUMNS`) plus, when the run can be routed blind, a table
of blind routing per true group.

Pieces: `bench.stress.scenarios` (the shifts), `bench.stress.selection`
(vectorised selectors), `bench.stress.runner` (the engine),
`bench.stress.rescore` (re-scoring stored models), `bench.stress.corruptions`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from noharm.analysis.record import (
    BLIND_ARTIFACT, BLIND_COLUMNS, BLIND_SCENARIO, CONFIG_ARTIFACT, EVALUATE, MODEL_ARTIFACT, PREDICTIONS_ARTIFACT,
    STRESS, STRESS_ARTIFACT, TAG,
)
from noharm.bench import tracking
from noharm.bench.compose import choose_candidate
from noharm.bench.errors import ConfigError
from noharm.bench.stress.rescore import ROUTERS, PairRescorer, RunFolder
from noharm.bench.stress.runner import (
    COLUMNS, SplitData, StressData, StressSettings, base_of, run_scenarios, unshifted_choices,
)
from noharm.bench.stress.scenarios import Scenario, ScenarioSkipped, make_scenarios
from noharm.datasets import DATASETS
from noharm.methods import UnknownNameError, get_method
from noharm.methods.selection import routing_accuracy

SUITE_KEYS = ("name", "repeats", "seed", "tolerance", "delta", "selectors", "router", "device", "candidate", "scenarios")


def default_suite_path() -> Path:
    """The packaged stress suite, `bench/suites/stress.yaml`."""
    return Path(str(resources.files("noharm.bench") / "suites" / "stress.yaml"))


@dataclass
class StressSuite:
    """A parsed stress suite: run settings, scenarios, and how to route and re-score."""

    name: str
    settings: StressSettings
    scenarios: list[Scenario]
    router: str = "auto"
    device: str = "auto"
    candidate: str | None = None  # the method's candidate to stress (default: its expert candidate)
    path: str = ""


def load_stress_suite(path: str | os.PathLike | None = None, repeats: int | None = None,
               tolerance: float | None = None) -> StressSuite:
    """Parse and check a stress suite (default: the packaged one); `repeats` and `tolerance` override the file's."""
    path = Path(path) if path else default_suite_path()
    if not path.is_file():
        raise ConfigError(f"stress suite {str(path)!r} does not exist; give a YAML file (see bench/suites/stress.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(raw, dict) and tolerance is not None:
        raw = {**raw, "tolerance": tolerance}
    return parse_stress_suite(raw, where=str(path), repeats=repeats)


def parse_stress_suite(raw: Any, where: str = "stress suite", repeats: int | None = None) -> StressSuite:
    """A `StressSuite` from a mapping (the YAML's content); ConfigError naming `where` on bad input."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a stress suite is a mapping with at least `scenarios`, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SUITE_KEYS)}")
    specs = raw.get("scenarios")
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{where}: `scenarios` must be a non-empty list of scenario mappings")
    scenarios: list[Scenario] = []
    for i, spec in enumerate(specs):
        scenarios += make_scenarios(spec, f"{where}: scenarios[{i}]")
    names = [s.name for s in scenarios]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: scenario names must be unique, {', '.join(dup)} repeats; give each a `name`")
    selectors = raw.get("selectors", list(StressSettings.selectors))
    if isinstance(selectors, str):
        selectors = [s.strip() for s in selectors.split(",") if s.strip()]
    if not isinstance(selectors, list):
        raise ConfigError(f"{where}: selectors must be a list of names, got {selectors!r}")
    settings = StressSettings(
        repeats=raw.get("repeats", StressSettings.repeats) if repeats is None else repeats,
        seed=raw.get("seed", 0), tolerance=raw.get("tolerance", StressSettings.tolerance),
        delta=raw.get("delta", StressSettings.delta), selectors=tuple(str(s) for s in selectors),
    )
    for key, kind in (("seed", int), ("tolerance", (int, float)), ("delta", (int, float))):
        value = getattr(settings, key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    settings.validate(where)
    router = raw.get("router", "auto")
    if router not in ROUTERS:
        raise ConfigError(f"{where}: unknown router {router!r}; choose one of: {', '.join(ROUTERS)}")
    return StressSuite(name=str(raw.get("name", "stress")), settings=settings, scenarios=scenarios, router=router,
                       device=str(raw.get("device", "auto")), candidate=raw.get("candidate"), path=where)


@dataclass
class StressOutcome:
    """What one (method run, ERM run) pair gives: the tidy table, blind routing per group, skipped parts."""

    table: pd.DataFrame
    blind: pd.DataFrame
    skipped: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    routing_accuracy: dict[str, float] = field(default_factory=dict)  # per split, overall

    def summary_metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: per scenario and strategy, the harm rate averaged over severities and at the worst one."""
        out: dict[str, float] = {}
        for (scenario, strategy), rows in self.table.groupby(["scenario", "strategy"], sort=False):
            out[f"stress/{scenario}/{strategy}/harm_rate_mean"] = float(rows["harm_rate"].mean())
            out[f"stress/{scenario}/{strategy}/harm_rate_max"] = float(rows["harm_rate"].max())
            out[f"stress/{scenario}/{strategy}/max_harm"] = float(rows["max_harm"].max())
            out[f"stress/{scenario}/{strategy}/changed_rate_mean"] = float(rows["changed_rate"].mean())
        for split, value in self.routing_accuracy.items():
            out[f"stress/routing_accuracy/{split}"] = value
        return out


def expert_candidate(run: RunFolder, requested: str | None) -> str:
    """The candidate to stress: the requested one, else the method's declared expert candidate, else compose's default."""
    if requested is None:
        try:
            requested = get_method(run.config["method"]).expert_candidate
        except UnknownNameError:  # a plugin method not installed here: fall back to the table's candidates
            requested = None
    return choose_candidate(run.predictions, requested)


def stress_pair(method_run: RunFolder, erm_run: RunFolder, suite: StressSuite,
                log: Callable[[str], None] = lambda msg: None, cache_dir: str | os.PathLike | None = None,
                ) -> StressOutcome:
    """Run the suite on one finished method run against its ERM run (folders read by `RunFolder.read`)."""
    if erm_run.config.get("method") != "erm":
        raise ConfigError(f"{str(erm_run.path)!r} is a {erm_run.config.get('method')!r} run; give an erm run as --erm")
    for key in ("dataset", "attribute", "seed"):
        if method_run.config.get(key) != erm_run.config.get(key):
            raise ConfigError(f"the ERM run is for {key}={erm_run.config.get(key)!r}, the method run for "
                              f"{method_run.config.get(key)!r}; give the ERM run of the same dataset, attribute and seed")
    settings = suite.settings
    candidate = expert_candidate(method_run, suite.candidate)
    tags = method_run.tags()
    skipped: list[str] = []
    rescorer = None
    if method_run.weights.is_file() and erm_run.weights.is_file():
        rescorer = PairRescorer(method_run, erm_run, candidate, router=suite.router, device=suite.device,
                                cache_dir=cache_dir, seed=settings.seed, log=log)
    # Blind routing data for validation and test rows.
    pred_group = routed = None
    if any(base_of(s)[1] for s in settings.selectors):
        if rescorer is None:
            skipped.append("blind routing: the runs lack model.pt")
        else:
            try:
                pred_group, routed = routing_arrays(method_run.predictions, rescorer)
            except ConfigError as err:
                skipped.append(f"blind routing: {err}")
    data = StressData.from_predictions(method_run.predictions, erm_run.predictions, candidate,
                                       pred_group=pred_group, routed_proba=routed, tags=tags)
    rescore = None if rescorer is None else _corruption_rescorer(data, rescorer, method_run.config["dataset"])
    log(f"stress: {tags['method']} vs erm on {tags['dataset']} ({tags['attribute']}), seed {tags['seed']}, "
        f"candidate {candidate}, {settings.repeats} repeats")
    table, more = run_scenarios(data, suite.scenarios, settings, rescore=rescore, log=log)
    blind, routing = blind_tables(data, settings)
    return StressOutcome(table=table, blind=blind, skipped=skipped + more, tags=tags, routing_accuracy=routing)


def routing_arrays(preds: pd.DataFrame, rescorer: PairRescorer) -> tuple[np.ndarray, np.ndarray]:
    """Predicted group (-1 outside val/test) and the predicted group's expert scores, aligned with `preds`' rows."""
    split = preds["split"].to_numpy()
    rows = np.flatnonzero(np.isin(split, ("val", "test")))
    h, scores = rescorer.routing(preds["sample_id"].to_numpy()[rows])
    pred_group = np.full(len(preds), -1, dtype=np.int64)
    pred_group[rows] = h
    routed = np.zeros((len(preds), scores.shape[1]))
    routed[rows] = scores
    return pred_group, routed


def _corruption_rescorer(data: StressData, rescorer: PairRescorer, dataset: str):
    kind = DATASETS.get(dataset).kind

    def rescore(scenario: Scenario, severity: float) -> SplitData:
        if kind != "image":
            raise ScenarioSkipped(f"image corruptions apply to image datasets; {dataset!r} is {kind}")
        if severity == 0:
            return data.test
        test = data.test
        try:
            expert, erm, pred_group, routed = rescorer.corrupted(test.sample_id, scenario.options["corruption"],
                                                                 int(severity))
        except ConfigError as err:  # e.g. weights that do not fit the rebuilt model
            raise ScenarioSkipped(str(err)) from None
        return SplitData(y=test.y, group=test.group, expert=expert.argmax(1) == test.y, erm=erm.argmax(1) == test.y,
                         sample_id=test.sample_id, pred_group=pred_group, routed=routed.argmax(1) == test.y)

    return rescore


def blind_tables(data: StressData, settings: StressSettings) -> tuple[pd.DataFrame, dict[str, float]]:
    """Blind routing per true group on validation and test, for each blind selector's strategy (unshifted data).

    Returns (rows: split, strategy, group, n, routing accuracy, accuracy of the
    blind composition and of ERM, harm = ERM - blind, harmed), and the
    overall routing accuracy per split.
    """
    bases = sorted({base_of(s)[0] for s in settings.selectors if base_of(s)[1]})
    if not bases or not (data.val.has_routing and data.test.has_routing):
        return pd.DataFrame(columns=list(BLIND_COLUMNS)), {}

    choices = unshifted_choices(data, [f"blind:{b}" for b in bases], settings)
    rows, overall = [], {}
    for split_name, part in (("val", data.val), ("test", data.test)):
        acc, per_group = routing_accuracy(part.pred_group, part.group, data.n_groups)
        overall[split_name] = acc
        n = np.bincount(part.group, minlength=data.n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            erm = np.bincount(part.group, weights=part.erm, minlength=data.n_groups) / n
            for base in bases:
                use = choices[base]
                correct = np.where(use[part.pred_group], part.routed, part.erm)
                blind = np.bincount(part.group, weights=correct, minlength=data.n_groups) / n
                for g, name in enumerate(data.group_names):
                    harm = float(erm[g] - blind[g])
                    rows.append({**{k: data.tags.get(k) for k in ("dataset", "attribute", "method", "seed")},
                                 "strategy": f"blind:{base}", "group": name, "n": int(n[g]),
                                 "routing_accuracy": float(per_group[g]), "blind": float(blind[g]), "erm": float(erm[g]),
                                 "harm": harm, "harmed": bool(harm > settings.tolerance), "split": split_name})
    return pd.DataFrame(rows, columns=list(BLIND_COLUMNS)), overall


def stress_run_folders(run_dir: str | os.PathLike, erm_dir: str | os.PathLike, suite: StressSuite,
                       log: Callable[[str], None] = lambda msg: None, cache_dir=None) -> StressOutcome:
    """`stress_pair` on two run folders written by `noharm trial --out`."""
    return stress_pair(RunFolder.read(run_dir), RunFolder.read(erm_dir), suite, log=log, cache_dir=cache_dir)


def write_outcome(outcome: StressOutcome, out: str | os.PathLike) -> list[Path]:
    """Write stress.parquet (and blind.parquet when there is blind routing) into folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / STRESS_ARTIFACT]
    outcome.table.to_parquet(paths[0], index=False)
    if len(outcome.blind):
        paths.append(out / BLIND_ARTIFACT)
        outcome.blind.to_parquet(paths[1], index=False)
    return paths


def run_stress_for_experiment(experiment: str, tracking_uri: str | None = None, suite_path: str | None = None,
                              repeats: int | None = None, log: Callable[[str], None] = print,
                              cache_dir: str | os.PathLike | None = None, tolerance: float | None = None,
                              methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Stress every finished evaluate run of an MLflow experiment against its ERM run; log the results there.

    Pairs each finished non-ERM `noharm.stage=evaluate` run with the finished
    ERM run of the same suite, dataset, target, attribute and seed, downloads
    their predictions (and config.json / model.pt for re-scoring), runs the
    suite, and logs one FINISHED run per (run, scenario) tagged
    `noharm.stage=stress`, `noharm.scenario`, `noharm.dataset`,
    `noharm.attribute`, `noharm.method`, `noharm.seed` (plus `noharm.key`,
    `noharm.stressed_run`, `noharm.erm_run`) with artifact `stress.parquet`
    and summary metrics `stress/<strategy>/<stat>` (per-severity harm rates
    as the history of `stress/<strategy>/harm_rate`, step = severity index),
    and one run with scenario `blind-routing` holding `blind.parquet` when the
    run could be routed blind. A (run, scenario) already logged with the same
    suite settings is not redone. Returns the tidy rows computed by this call.
    `methods` limits the pass to runs of those methods. `repeats` and `tolerance` override the suite's (e.g. a small pass at the end
    of `make bench`: `run_stress_for_experiment(name, uri, None, repeats=100)`).
    """

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per artifact is noise here
    suite = load_stress_suite(suite_path, repeats=repeats, tolerance=tolerance)
    tracker = tracking.open_existing(experiment, tracking_uri)
    runs = tracking.finished_runs(tracker, EVALUATE)
    done = {r["tags"].get(f"{TAG}key") for r in tracking.finished_runs(tracker, STRESS)}
    erm: dict[tuple, dict] = {}
    for r in runs:
        if r["tags"].get(f"{TAG}method") == "erm":
            erm.setdefault(_pair_key(r), r)
    digest = suite_digest(suite)
    tables = []
    for run in runs:
        tags = run["tags"]
        what = (f"{tags.get(TAG + 'method')} on {tags.get(TAG + 'dataset')} ({tags.get(TAG + 'attribute')}), "
                f"seed {tags.get(TAG + 'seed')}, run {run['run_id']}")
        if tags.get(f"{TAG}method") == "erm" or (methods and tags.get(f"{TAG}method") not in methods):
            continue
        partner = erm.get(_pair_key(run))
        if partner is None:
            log(f"stress: skipping {what}: no finished ERM run with the same dataset, attribute and seed")
            continue
        names = [s.name for s in suite.scenarios] + ([BLIND_SCENARIO] if _wants_blind(suite) else [])
        keys = {name: stress_key(run["run_id"], name, digest) for name in names}
        if all(k in done for k in keys.values()):
            log(f"stress: {what} already stressed with these settings")
            continue
        with tempfile.TemporaryDirectory(prefix="noharm-stress-") as tmp:
            names = (PREDICTIONS_ARTIFACT, CONFIG_ARTIFACT, MODEL_ARTIFACT)
            method_dir = tracking.download_artifacts(tracker, run["run_id"], Path(tmp) / "method", names)
            erm_dir = tracking.download_artifacts(tracker, partner["run_id"], Path(tmp) / "erm", names)
            outcome = stress_pair(_folder(method_dir, run), _folder(erm_dir, partner), suite, log=log,
                                  cache_dir=cache_dir)
            for why in outcome.skipped:
                log(f"stress: {what}: skipped {why}")
            log_outcome(tracker, outcome, suite, run, partner, keys, done, Path(tmp) / "out")
        tables.append(outcome.table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(COLUMNS))


def _wants_blind(suite: StressSuite) -> bool:
    return any(base_of(s)[1] for s in suite.settings.selectors)


def suite_digest(suite: StressSuite) -> str:
    """A short hash of everything in the suite that changes the numbers (part of each stress run's key)."""
    spec = {"settings": asdict(suite.settings), "router": suite.router, "candidate": suite.candidate,
            "scenarios": [{"kind": s.kind, "name": s.name, "severities": s.severities, "replace": s.replace,
                           "group": s.group, "options": s.options} for s in suite.scenarios]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stress_key(run_id: str, scenario: str, digest: str) -> str:
    return f"stress:{run_id}:{scenario}:{digest}"


def scenario_metrics(rows: pd.DataFrame) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]]]:
    """(summary metrics, per-severity history) of one scenario's rows."""
    summary: dict[str, float] = {}
    for strategy, part in rows.groupby("strategy", sort=False):
        summary[f"stress/{strategy}/harm_rate_mean"] = float(part["harm_rate"].mean())
        summary[f"stress/{strategy}/harm_rate_max"] = float(part["harm_rate"].max())
        summary[f"stress/{strategy}/max_harm"] = float(part["max_harm"].max())
        summary[f"stress/{strategy}/changed_rate_mean"] = float(part["changed_rate"].mean())
    history = []
    for step, (_, part) in enumerate(rows.groupby("severity", sort=False)):
        history.append((step, {f"stress/{r.strategy}/harm_rate": float(r.harm_rate) for r in part.itertuples()}))
    return summary, history


def log_outcome(tracker, outcome: StressOutcome, suite: StressSuite, run: dict, partner: dict, keys: dict[str, str],
                done: set, scratch: Path) -> None:
    """Log one stress run per scenario (and one for blind routing) not yet in `done`."""
    src = run["tags"]
    base_tags = {f"{TAG}stage": STRESS, f"{TAG}stressed_run": run["run_id"],
                 f"{TAG}erm_run": partner["run_id"], f"{TAG}stress_suite": suite.name}
    for key in ("dataset", "attribute", "method", "seed", "suite", "target", "groups"):
        if f"{TAG}{key}" in src:
            base_tags[f"{TAG}{key}"] = src[f"{TAG}{key}"]
    for key, value in outcome.tags.items():  # from config.json when the tags lack them
        base_tags.setdefault(f"{TAG}{key}", value)
    st = suite.settings
    base_params = {"stress.repeats": st.repeats, "stress.seed": st.seed, "stress.tolerance": st.tolerance,
                   "stress.delta": st.delta, "stress.selectors": ",".join(st.selectors), "stress.router": suite.router}
    skipped = {line.split(":", 1)[0].removeprefix("scenario ").strip(): line.split(":", 1)[1].strip()
               for line in outcome.skipped if line.startswith("scenario ")}
    for scenario in suite.scenarios:
        key = keys[scenario.name]
        if key in done:
            continue
        rows = outcome.table[outcome.table["scenario"] == scenario.name]
        folder = scratch / scenario.name
        folder.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(folder / STRESS_ARTIFACT, index=False)
        tags = {**base_tags, f"{TAG}scenario": scenario.name, f"{TAG}scenario_kind": scenario.kind,
                f"{TAG}key": key}
        if scenario.name in skipped:
            tags[f"{TAG}skipped"] = skipped[scenario.name]
        params = {**base_params, "stress.severities": ",".join(f"{v:g}" for v in scenario.severities),
                  "stress.replace": scenario.replace, "stress.group": scenario.group or "(smallest)",
                  **{f"stress.{k}": v for k, v in scenario.options.items()}}
        summary, history = scenario_metrics(rows)
        name = f"stress {scenario.name} {base_tags.get(TAG + 'method')} s{base_tags.get(TAG + 'seed')}"
        tracking.log_finished_run(tracker, name, tags, params, summary, folder, history)
        done.add(key)
    key = keys.get(BLIND_SCENARIO)
    if key is not None and key not in done:
        folder = scratch / BLIND_SCENARIO
        folder.mkdir(parents=True, exist_ok=True)
        outcome.blind.to_parquet(folder / BLIND_ARTIFACT, index=False)
        metrics = {f"stress/routing_accuracy/{k}": v for k, v in outcome.routing_accuracy.items()}
        for r in outcome.blind.itertuples():
            metrics[f"stress/{r.strategy}/{r.split}/harm/group:{r.group}"] = float(r.harm)
            metrics[f"stress/{r.strategy}/{r.split}/routing_accuracy/group:{r.group}"] = float(r.routing_accuracy)
        tags = {**base_tags, f"{TAG}scenario": BLIND_SCENARIO, f"{TAG}scenario_kind": "blind",
                f"{TAG}key": key}
        reasons = [line for line in outcome.skipped if "blind" in line]
        if not len(outcome.blind) and reasons:
            tags[f"{TAG}skipped"] = "; ".join(reasons)
        tracking.log_finished_run(tracker, f"stress {BLIND_SCENARIO} {base_tags.get(TAG + 'method')}", tags,
                                  base_params, metrics, folder)
        done.add(key)


def _pair_key(run: dict) -> tuple:
    t = run["tags"]
    return tuple(str(t.get(f"{TAG}{k}")) for k in ("suite", "dataset", "target", "attribute", "seed"))


def _folder(path: str | os.PathLike, run: dict) -> RunFolder:
    """A downloaded MLflow run as a RunFolder: its config.json, completed from the run's tags and params."""
    path = Path(path)
    tags, params = run["tags"], run.get("params", {})
    config = RunFolder.read(path).config if (path / CONFIG_ARTIFACT).is_file() else {}
    if not (path / PREDICTIONS_ARTIFACT).is_file():
        raise ConfigError(f"MLflow run {run['run_id']} has no {PREDICTIONS_ARTIFACT}")
    for key in ("dataset", "attribute", "method"):
        config.setdefault(key, tags.get(f"{TAG}{key}"))
    config.setdefault("seed", int(tags.get(f"{TAG}seed", 0)))
    if "resolved_hparams" not in config:  # rebuild from the run's params (one per hyperparameter)
        config["resolved_hparams"] = {k: yaml.safe_load(v) for k, v in params.items()
                                      if "." not in k and not k.startswith("trial")}
    if "dataset_options" not in config:
        config["dataset_options"] = {k.split(".", 1)[1]: yaml.safe_load(v) for k, v in params.items()
                                     if k.startswith("dataset.")}
    config.setdefault("min_group_size", int(params.get("trial.min_group_size", 10)))
    return RunFolder(path=path, config=config, predictions=pd.read_parquet(path / PREDICTIONS_ARTIFACT))
