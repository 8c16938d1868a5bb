"""Suite -> cells (dataset, attribute, method) -> trial configs.

A *cell* is one (dataset entry, attribute, method) with its fixed
hyperparameters. A cell is either searched (Optuna over the method's declared
space, on the search seed) or takes its settings from another cell's search
(`search_from`), or from the declared defaults when nothing is searched.
`trial_config` turns a cell, hyperparameters and a seed into a `TrialConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from noharm.bench.sweep.suite import DatasetEntry, Suite
from noharm.bench.trial import TrialConfig

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
    from noharm.methods import get_method

    declared = get_method(method).hparams
    out = {k: v for k, v in suite.hparams.items() if k in declared}
    out.update({k: v for k, v in entry.hparams.items() if k in declared})
    out.update(suite.method(method).hparams)
    return out


def searchable(method: str, fixed: dict[str, Any]) -> list[str]:
    """Names of the method's hparams the search varies (declared searchable and not fixed)."""
    from noharm.methods import get_method

    return [name for name, p in get_method(method).hparams.items() if p.search and name not in fixed]


def method_names(suite: Suite) -> list[str]:
    """The suite's methods, plus ERM when selectors need it as the reference."""
    names = [m.name for m in suite.methods]
    if suite.selectors and ERM not in names:
        names.append(ERM)
    return names


def cells(suite: Suite) -> list[Cell]:
    """Every (dataset, attribute, method) of the suite in a stable order."""
    from noharm.bench.sweep.suite import MethodEntry

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


def trial_config(suite: Suite, cell: Cell, hparams: dict[str, Any], seed: int) -> TrialConfig:
    """The trial of `cell` with `hparams` (fixed overrides applied on top) on `seed`, fully resolved."""
    from noharm.methods import get_method
    from noharm.methods.hparams import resolve

    resolved = resolve(get_method(cell.method).hparams, {**hparams, **cell.fixed}, owner=cell.method)
    return TrialConfig(
        dataset=cell.dataset, attribute=cell.attribute, method=cell.method, seed=seed, hparams=resolved,
        dataset_options=dict(cell.options), objective=suite.search.objective, precision=suite.precision,
        min_group_size=suite.min_group_size, train_predictions=suite.train_predictions,
    )


def composed_methods(suite: Suite) -> list[str]:
    """Methods whose evaluate runs are composed with ERM by the selectors."""
    from noharm.methods import get_method

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
    from noharm.methods import get_method

    cls = get_method(method)
    return cls.expert_candidate or cls.candidates[0]


def count_trials(suite: Suite) -> dict[str, int]:
    """Planned trials per stage (before skipping what MLflow already holds).

    A compose trial logs one run per selector strategy.
    """
    grid = cells(suite)
    n_pairs = len({c.pair for c in grid})
    return {
        "search": sum(suite.search.trials for c in grid if c.searched),
        "evaluate": len(grid) * len(suite.seeds),
        "compose": n_pairs * len(suite.seeds) * len(composed_methods(suite)),
    }
