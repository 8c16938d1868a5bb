"""Suite -> cells (dataset, attribute, method) -> trial configs.

A *cell* is one (dataset entry, attribute, method) with its fixed
hyperparameters. A cell is either searched (Optuna over the method's declared
space, on the search seed) or takes its settings from another cell's search
(`search_from`), or from the declared defaults when nothing is searched.
`trial_spec` turns a cell, the searched settings and a seed into the trial's `TrialSpec`: the one place
a search proposal (or a search result read back) meets the cell's fixed settings and the suite's, and
the one place a sweep trial's hyperparameters are resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from noharm.analysis.record import COMPOSE, EVALUATE, SEARCH
from noharm.bench.sweep.suite import DatasetEntry, MethodEntry, Suite
from noharm.bench.spec import TrialSpec
from noharm.methods import get_method

ERM = "erm"


@dataclass(frozen=True)
class Cell:
    """One (dataset, attribute, method) of the grid."""

    dataset: str
    label: str  # dataset label: name, or name[target]
    options: dict[str, Any] = field(hash=False, compare=False)
    attribute: str = ""
    method: str = ""
    fixed: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # fixed hparam overrides
    searched: bool = False
    search_from: str | None = None  # id of the cell whose best settings this one uses

    @property
    def id(self) -> str:
        return cell_id(self.label, self.attribute, self.method)

    @property
    def pair(self) -> tuple[str, str]:
        """(dataset label, attribute): the unit ERM is shared over."""
        return (self.label, self.attribute)


def cell_id(label: str, attribute: str, method: str) -> str:
    return f"{label}/{attribute}/{method}"


def fixed_hparams(suite: Suite, entry: DatasetEntry, method: str) -> dict[str, Any]:
    """Suite-wide < dataset < method overrides, keeping only names the method declares."""
    declared = get_method(method).hparams
    out = {k: v for k, v in suite.hparams.items() if k in declared}
    out.update({k: v for k, v in entry.hparams.items() if k in declared})
    out.update(suite.method(method).hparams)
    return out


def searchable(method: str, fixed: dict[str, Any]) -> list[str]:
    """Names of the method's hparams the search varies (declared searchable and not fixed)."""
    return [name for name, p in get_method(method).hparams.items() if p.search and name not in fixed]


def method_names(suite: Suite) -> list[str]:
    """The suite's methods, plus ERM when selectors need it as the reference."""
    names = [m.name for m in suite.methods]
    if suite.selectors and ERM not in names:
        names.append(ERM)
    return names


def cells(suite: Suite) -> list[Cell]:
    """Every (dataset, attribute, method) of the suite in a stable order."""
    if suite.selectors and ERM not in [m.name for m in suite.methods]:
        # ERM is the reference the selectors compare against: run it even when not listed.
        suite = suite.model_copy(update={"methods": [*suite.methods, MethodEntry(name=ERM)]})
    out = []
    for entry in suite.datasets:
        searched_attrs = entry.attributes if entry.search is None else entry.search
        for method in method_names(suite):
            fixed = fixed_hparams(suite, entry, method)
            can_search = suite.search.trials > 0 and bool(searchable(method, fixed))
            for attr in entry.attributes:
                searched = can_search and attr in searched_attrs
                source = None
                if can_search and not searched and searched_attrs:
                    source = cell_id(entry.label, searched_attrs[0], method)
                out.append(Cell(dataset=entry.name, label=entry.label, options=entry.resolved_options,
                                attribute=attr, method=method, fixed=fixed, searched=searched,
                                search_from=source))
    return out


def trial_spec(suite: Suite, cell: Cell, hparams: dict[str, Any], seed: int) -> TrialSpec:
    """The trial of `cell` on `seed` with the searched values of `hparams` and the cell's fixed overrides.

    Those values are set for the trial; every other name is resolved here, once, by the budget rule of
    `TrialSpec.resolve` (set > the dataset's declared budget > the method's default), and the spec records
    where each value came from. `hparams` may be a fully resolved dict (a search result read back from
    MLflow): only its searched names are kept, so a method default stored there never masks the
    dataset's budget. A bad name or value fails here, in the driver, not in a worker.
    """
    searched = set(searchable(cell.method, cell.fixed))
    chosen = {**{k: v for k, v in hparams.items() if k in searched}, **cell.fixed}
    return TrialSpec.resolve(
        dataset=cell.dataset, attribute=cell.attribute, method=cell.method, seed=seed, hparams=chosen,
        dataset_options=dict(cell.options), objective=suite.search.objective, precision=suite.precision,
        channels_last=suite.channels_last,
        min_group_size=suite.min_group_size, train_predictions=suite.train_predictions,
    )


def composed_methods(suite: Suite) -> list[str]:
    """Methods whose evaluate runs are composed with ERM by the selectors."""
    if not suite.selectors:
        return []
    out = []
    for name in method_names(suite):
        if name == ERM:
            continue
        if get_method(name).expert_candidate is not None or suite.selection.wrap == "all":
            out.append(name)
    return out


def compose_candidate(method: str) -> str:
    """The candidate of `method` mixed with ERM: its experts, else its primary candidate."""
    cls = get_method(method)
    return cls.expert_candidate or cls.candidates[0]


def count_trials(suite: Suite) -> dict[str, int]:
    """Planned trials per stage (before skipping what MLflow already holds).

    A compose trial logs one run per selector strategy.
    """
    grid = cells(suite)
    n_pairs = len({c.pair for c in grid})
    return {
        SEARCH: sum(suite.search.trials for c in grid if c.searched),
        EVALUATE: len(grid) * len(suite.seeds),
        COMPOSE: n_pairs * len(suite.seeds) * len(composed_methods(suite)),
    }
