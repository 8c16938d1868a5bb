"""The sweep as one Ray Tune `Searcher`: search, evaluate and compose, pipelined.

One Tuner runs the whole suite. This searcher hands Tune the next trial spec:

1. search: per searched cell (dataset, attribute, method), trial 0 runs the method's
   declared defaults and Optuna's TPE sampler over the declared space proposes the
   rest, run on the search seed;
2. evaluate: once a cell's search has used its budget, its best settings run on
   every seed (on the search seed the best search run is copied, not retrained);
   cells that are not searched run at once with their fixed settings;
3. compose: once a method's and its seed's ERM evaluate runs exist, one trial
   composes them with every selector strategy.

What MLflow already holds as FINISHED is not run again: evaluate and compose keys
already FINISHED are skipped, and a search proposes only its trial numbers that
have no FINISHED run. That is how a killed sweep resumes where it stopped.

A resumed sweep ends with the same results as an uninterrupted one because a
search proposal is a pure function of (suite, cell, trial number, history): trial
`i` of a cell is drawn by a TPE sampler seeded from (suite, cell, i) that is told
the results of trials `0 .. i - HISTORY_LAG` in number order, and nothing else.
Which trials happen to be in flight, which finished first, and whether the driver
was restarted in between do not enter. (Trial `i` waits for trial `i - HISTORY_LAG`
when that one is still running; with the suite's concurrency below the lag it never
waits.) The best settings are the highest objective, ties to the lowest number.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from noharm.analysis.record import COMPOSE, EVALUATE, SEARCH, SEARCH_CELL_TAG, SEARCH_SPACE_TAG, TAG
from noharm.bench.sweep import grid
from noharm.bench.sweep.grid import ERM, Cell
from noharm.bench.sweep.keys import compose_key, trial_key
from noharm.bench.sweep.suite import Suite
from noharm.bench.sweep.trials import WORST_OBJECTIVE, stored_objective
from noharm.datasets import DATASETS
from noharm.methods import get_method
from noharm.methods.hparams import search_space


@dataclass
class StageCount:
    planned: int = 0
    done: int = 0
    skipped: int = 0  # already FINISHED in MLflow before this sweep
    failed: int = 0
    blocked: int = 0  # not run because something it needs failed
    running: int = 0

    @property
    def pending(self) -> int:
        return max(self.planned - self.done - self.skipped - self.failed - self.blocked - self.running, 0)


# Search trial i is told the results of trials 0 .. i - HISTORY_LAG (see the module docstring).
HISTORY_LAG = 4
# Draws of one trial number before a repeated setting is run anyway (small discrete spaces).
REDRAWS = 10


@dataclass
class SearchState:
    cell: Cell
    space: dict[str, Any]  # Optuna distributions of the searched hparams
    todo: list[int]  # trial numbers still to propose, ascending
    running: dict[str, int] = field(default_factory=dict)  # Tune trial id -> trial number
    results: dict[int, tuple] = field(default_factory=dict)  # number -> (objective, hparams, run_id, key)
    failed: set[int] = field(default_factory=set)
    keys: dict[int, str] = field(default_factory=dict)  # number -> key of every proposal so far
    finished: bool = False

    @property
    def budget(self) -> int:
        return len(self.todo)

    def settled(self, number: int) -> bool:
        return number in self.results or number in self.failed


@dataclass
class Failure:
    stage: str
    what: str
    error: str


def stable_seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class SweepSearcher(Searcher):
    """Proposes every trial of a suite, in dependency order, skipping what MLflow already holds."""

    def __init__(self, suite: Suite, finished: dict[tuple[str, str], Any], prior_search: dict[str, list]):
        """`finished`: {(stage, key): run} already FINISHED; `prior_search`: {cell id: [(hparams, objective,
        run_id, key, trial number)]} of FINISHED search runs, oldest first."""
        super().__init__(metric="objective", mode="max")
        self.suite = suite
        self.finished_runs = {k: run.info.run_id for k, run in finished.items()}
        self.cells = {c.id: c for c in grid.cells(suite)}
        self.counts = {stage: StageCount() for stage in (SEARCH, EVALUATE, COMPOSE)}
        self.failures: list[Failure] = []
        self.queue: deque[dict[str, Any]] = deque()
        self.live: dict[str, dict[str, Any]] = {}  # trial id -> spec
        self.searches: dict[str, SearchState] = {}
        self.best: dict[str, tuple[dict[str, Any], str | None, str | None]] = {}  # cell -> (hparams, run, key)
        self.eval_runs: dict[tuple[str, int], tuple[str, str]] = {}  # (cell id, seed) -> (run id, key)
        self.eval_failed: set[tuple[str, int]] = set()
        self.composed_methods = grid.composed_methods(suite)
        self.compose_pending = {(c.pair, c.method, s) for c in self.cells.values()
                                if c.method in self.composed_methods for s in suite.seeds}
        planned = grid.count_trials(suite)
        self.counts[EVALUATE].planned = planned[EVALUATE]
        self.counts[COMPOSE].planned = len(self.compose_pending)
        for cell in self.cells.values():
            if cell.searched:
                self._start_search(cell, prior_search.get(cell.id, []))
        for cell in self.cells.values():
            if not cell.searched and cell.search_from is None:
                self.best[cell.id] = ({}, None, None)
                self._enqueue_evaluate(cell)
        for state in self.searches.values():
            self._maybe_finish_search(state)

    # ---- Tune's Searcher interface -----------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        # Searches first: they gate evaluations, so running them early leaves no idle slots at the end.
        spec = self._next_search(trial_id)
        if spec is None and self.queue:
            spec = self.queue.popleft()
        if spec is None:
            return Searcher.FINISHED if self.is_done() else None
        self.live[trial_id] = spec
        self.counts[spec["stage"]].running += 1
        return {"spec": spec}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        spec = self.live.pop(trial_id, None)
        if spec is None:
            return
        count = self.counts[spec["stage"]]
        count.running -= 1
        failed = error or not result or bool(result.get("failed"))
        message = (result or {}).get("error") or ("the trial's worker crashed" if error else "no result")
        if failed:
            count.failed += 1
            self.failures.append(Failure(spec["stage"], spec["label"], message))
        elif result.get("skipped"):
            count.skipped += 1
        else:
            count.done += 1
        handler = {SEARCH: self._search_done, EVALUATE: self._evaluate_done, COMPOSE: lambda *a: None}
        handler[spec["stage"]](spec, trial_id, None if failed else result)

    def save(self, checkpoint_path: str) -> None:
        # MLflow is the record a sweep resumes from (see the module docstring); Tune's
        # periodic searcher snapshot is not needed, so nothing is written.
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    # ---- progress ----------------------------------------------------------------------------
    def is_done(self) -> bool:
        return not self.queue and not self.live and all(s.finished for s in self.searches.values())

    # ---- search --------------------------------------------------------------------------------
    def _start_search(self, cell: Cell, prior: list) -> None:

        space = OptunaSearch.convert_search_space(search_space(get_method(cell.method).hparams, cell.fixed))
        trials = self.suite.search.trials
        state = SearchState(cell=cell, space=space, todo=[])
        for hparams, objective, run_id, key, number in prior:
            # Only results of exactly this search (same fixed settings, seed, objective, code) count.
            if not 0 <= number < trials or number in state.results:
                continue
            if trial_key(grid.trial_config(self.suite, cell, hparams, self.suite.search_seed)) != key:
                continue
            state.results[number] = (max(objective, WORST_OBJECTIVE), hparams, run_id, key)
            state.keys[number] = key
        state.todo = [i for i in range(trials) if i not in state.results]
        self.searches[cell.id] = state
        self.counts[SEARCH].planned += trials
        self.counts[SEARCH].skipped += len(state.results)

    def _next_search(self, trial_id: str) -> dict[str, Any] | None:
        # Round-robin over cells with budget left, so every search progresses.
        for state in sorted(self.searches.values(), key=lambda s: (len(s.running) + len(s.results), s.cell.id)):
            if not state.todo:
                continue
            number = state.todo[0]
            spec = self._propose(state, number)
            if spec is None:  # its history is not settled yet
                continue
            state.todo.pop(0)
            state.running[trial_id] = number
            state.keys[number] = spec["key"]
            return spec
        return None

    def _propose(self, state: SearchState, number: int) -> dict[str, Any] | None:
        """The settings of trial `number` of a cell: a pure function of (suite, cell, number, history)."""
        visible = range(number - HISTORY_LAG + 1)
        if not all(state.settled(j) for j in visible):
            return None
        history = [(state.results[j][1], state.results[j][0]) for j in visible if j in state.results]
        taken = {key for j, key in state.keys.items() if j < number}
        spec = None
        for attempt in range(REDRAWS):
            seed = stable_seed(f"{self.suite.name}/{state.cell.id}/{number}/{attempt}")
            # Trial 0 runs the method's declared defaults, so the search never ends worse (on
            # validation) than the defaults: three random draws can all land where a method fails.
            hparams = declared_defaults(state.cell.method, state.space) if number == 0 and attempt == 0 \
                else draw_settings(state.space, history, seed)
            spec = self._trial_spec(SEARCH, state.cell, hparams, self.suite.search_seed)
            # A small discrete space may have nothing new left: the last draw then runs anyway
            # (a cheap skip when its key is FINISHED).
            if spec["key"] not in taken:
                break
        spec["tags"]["search_trial"] = number
        return spec

    def _search_done(self, spec: dict[str, Any], trial_id: str, result: dict | None) -> None:
        state = self.searches[spec["cell"]]
        number = state.running.pop(trial_id)
        if result is None:
            state.failed.add(number)
        else:
            objective = float(result.get("objective", WORST_OBJECTIVE))
            state.results[number] = (objective, spec["trial"]["hparams"], result["run_id"], spec["key"])
        self._maybe_finish_search(state)

    def _maybe_finish_search(self, state: SearchState) -> None:
        if state.finished or state.budget > 0 or state.running:
            return
        state.finished = True
        dependants = [c for c in self.cells.values() if c.id == state.cell.id or c.search_from == state.cell.id]
        if not state.results:
            for cell in dependants:
                self._block_evaluate(cell, f"its search ({state.cell.id}) had no successful trial")
            return
        # Ties go to the lowest trial number: the same choice however the trials were scheduled.
        number = max(state.results, key=lambda n: (state.results[n][0], -n))
        objective, hparams, run_id, key = state.results[number]
        for cell in dependants:
            self.best[cell.id] = (hparams, run_id if cell.id == state.cell.id else None,
                                  key if cell.id == state.cell.id else None)
            self._enqueue_evaluate(cell)

    # ---- evaluate ------------------------------------------------------------------------------
    def _enqueue_evaluate(self, cell: Cell) -> None:
        hparams, best_run, best_key = self.best[cell.id]
        for seed in self.suite.seeds:
            spec = self._trial_spec(EVALUATE, cell, hparams, seed)
            done = self.finished_runs.get((EVALUATE, spec["key"]))
            if done:
                self.counts[EVALUATE].skipped += 1
                self._record_evaluate(cell, seed, done, spec["key"])
                continue
            # Search runs keep no model.pt when only evaluate runs do: the search seed then retrains
            # (same seed, same numbers) so that its evaluate run has one.
            if best_run and spec["key"] == best_key and self.suite.keep_models != EVALUATE:
                spec["copy_from"] = best_run
            self.queue.append(spec)

    def _block_evaluate(self, cell: Cell, reason: str) -> None:
        for seed in self.suite.seeds:
            self.counts[EVALUATE].blocked += 1
            self.failures.append(Failure(EVALUATE, f"{cell.id} s{seed}", f"not run: {reason}"))
            self._evaluate_failed(cell, seed)

    def _evaluate_done(self, spec: dict[str, Any], trial_id: str, result: dict | None) -> None:
        cell, seed = self.cells[spec["cell"]], spec["trial"]["seed"]
        if result is None:
            self._evaluate_failed(cell, seed)
        else:
            self._record_evaluate(cell, seed, result["run_id"], spec["key"])

    def _record_evaluate(self, cell: Cell, seed: int, run_id: str, key: str) -> None:
        self.eval_runs[(cell.id, seed)] = (run_id, key)
        self._release_compose(cell.pair, seed)

    def _evaluate_failed(self, cell: Cell, seed: int) -> None:
        self.eval_failed.add((cell.id, seed))
        self._release_compose(cell.pair, seed)

    # ---- compose -------------------------------------------------------------------------------
    def _release_compose(self, pair: tuple[str, str], seed: int) -> None:
        """Enqueue (or block) every composition of `pair` on `seed` whose two inputs are settled."""
        erm_id = grid.cell_id(*pair, ERM)
        for method in self.composed_methods:
            unit = (pair, method, seed)
            if unit not in self.compose_pending:
                continue
            method_id = grid.cell_id(*pair, method)
            failed = [c for c in (erm_id, method_id) if (c, seed) in self.eval_failed]
            if failed:
                self.compose_pending.discard(unit)
                self.counts[COMPOSE].blocked += 1
                self.failures.append(Failure(COMPOSE, f"{method_id} s{seed}",
                                             f"not run: evaluate of {failed[0]} failed"))
                continue
            if (erm_id, seed) not in self.eval_runs or (method_id, seed) not in self.eval_runs:
                continue
            self.compose_pending.discard(unit)
            method_run, method_key = self.eval_runs[(method_id, seed)]
            erm_run, erm_key = self.eval_runs[(erm_id, seed)]
            candidate = grid.compose_candidate(method)
            metric = self.suite.selection.metric
            keys = {s: compose_key(method_key, erm_key, s, metric, candidate) for s in self.suite.selectors}
            if all((COMPOSE, k) in self.finished_runs for k in keys.values()):
                self.counts[COMPOSE].skipped += 1
                continue
            cell = self.cells[method_id]
            self.queue.append({
                "stage": COMPOSE, "cell": method_id, "key": method_key,
                "name": f"compose {method_id} s{seed}", "label": f"{method_id} s{seed}",
                "tags": {}, COMPOSE: {"method_run": method_run, "erm_run": erm_run, "strategies": list(keys),
                                        "keys": keys, "metric": metric, "candidate": candidate,
                                        "dataset": cell.dataset, "seed": seed},
            })

    # ---- specs ---------------------------------------------------------------------------------
    def _trial_spec(self, stage: str, cell: Cell, hparams: dict[str, Any], seed: int) -> dict[str, Any]:
        cfg = grid.trial_config(self.suite, cell, hparams, seed)
        target = cell.options.get("target") or DATASETS.get(cell.dataset).default_target
        return {
            "stage": stage, "cell": cell.id, "key": trial_key(cfg), "name": f"{stage} {cell.id} s{seed}",
            "label": f"{cell.id} s{seed}",
            "trial": asdict(cfg), "copy_from": None,
            "tags": {"dataset": cell.dataset, "target": target, "attribute": cell.attribute,
                     "method": cell.method, "seed": seed, **search_tags(cell)},
        }


def search_tags(cell: Cell) -> dict[str, str]:
    """What a report needs to state a cell's chosen settings: the searched domains and the cell searched."""
    source = cell.id if cell.searched else cell.search_from
    if source is None:
        return {}
    declared = get_method(cell.method).hparams
    space = {name: declared[name].search_record() for name in grid.searchable(cell.method, cell.fixed)}
    return {SEARCH_SPACE_TAG: json.dumps(space, sort_keys=True), SEARCH_CELL_TAG: source}


def declared_defaults(method: str, space: dict[str, Any]) -> dict[str, Any]:
    """The method's declared default of every searched hyperparameter (the first trial of each search)."""
    declared = get_method(method).hparams
    return {name: declared[name].default for name in space}


def draw_settings(space: dict[str, Any], history: list[tuple[dict[str, Any], float]], seed: int) -> dict[str, Any]:
    """One proposal of Optuna's TPE sampler seeded with `seed`, told `history` [(hparams, objective)] in order.

    A fresh sampler and in-memory study per proposal: nothing carries over between proposals, so
    the same arguments always give the same settings.
    """
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for hparams, objective in history:
        study.add_trial(optuna.trial.create_trial(params={k: hparams[k] for k in space}, distributions=space,
                                                  value=objective))
    return dict(study.ask(space).params)


def prior_search_results(runs: list, suite: Suite, code_version: str) -> dict[str, list]:
    """{cell id: [(hparams, objective, run id, key, trial number)]} from FINISHED search runs of this code
    version, oldest first (a run without a trial number, from before numbers were tagged, gets its place)."""
    out: dict[str, list] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        if tags.get(f"{TAG}code_version") != code_version:
            continue
        cell = tags.get(f"{TAG}cell", "")
        method = tags.get(f"{TAG}method", "")
        try:
            declared = get_method(method).hparams
        except KeyError:
            continue
        hparams = {k: declared[k].cast(k, v) for k, v in run.data.params.items() if k in declared}
        objective = stored_objective(run.data.metrics)
        number = tags.get(f"{TAG}search_trial")
        entries = out.setdefault(cell, [])
        entries.append((hparams, objective if math.isfinite(objective) else WORST_OBJECTIVE, run.info.run_id,
                        tags.get(f"{TAG}key", ""), int(number) if number is not None else len(entries)))
    return out
