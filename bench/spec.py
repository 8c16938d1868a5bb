"""The trial spec: everything that defines one trial's numbers, hyperparameters resolved once.

A `TrialSpec` is built by `TrialSpec.resolve` (the sweep's driver through `bench.sweep.grid.trial_spec`,
and `noharm trial`), the one place a trial's hyperparameters are resolved, by the rule of
`trial_hparams`: a value set for the trial (`--set`, a suite's fixed value or a searched one) > the
dataset's declared training budget > the method's declared default. The spec carries every resolved
value and where it came from (`sources`), so the trial key, the MLflow params and the worker read
it as it is and resolve nothing again. It crosses to Ray workers as a plain dict (`to_dict`) and is
rebuilt there by `from_dict`, which refuses unknown or missing keys with one clear line.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from noharm.bench.errors import ConfigError
from noharm.bench.objectives import canonical
from noharm.datasets import DATASETS
from noharm.methods import get_method
from noharm.methods.hparams import HparamError, resolve
from noharm.methods.selection import STRATEGIES
from noharm.settings import CHANNELS_LAST, PRECISION, SELECTION_METRIC

# The budget a trial always reports (with where each value came from), besides what its dataset declares.
REPORTED_BUDGET = ("epochs", "batch_size")
# Where a trial's hyperparameter value came from, strongest first: set by the user (`--set`) or the suite
# (a fixed value or a searched one), the dataset's declared training budget, the method's declared default.
FROM_SET, FROM_DATASET, FROM_METHOD = "set", "dataset", "method"
SOURCES = (FROM_SET, FROM_DATASET, FROM_METHOD)


def declared_budget(dataset: str) -> dict[str, Any]:
    """The training budget a registered dataset declares ({} when none, or for a plugin without the attribute)."""
    return dict(getattr(DATASETS.get(dataset), "training_budget", None) or {})


def trial_hparams(method: str, dataset: str,
                  overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A trial's hyperparameters by the one precedence rule (`TrialSpec.resolve` is its caller).

    A value set for the trial (`--set`, a suite's fixed value or a searched one) beats the dataset's
    declared `training_budget` (e.g. german: 30 epochs at batch 32), which beats the method's declared
    default. Returns the resolved values and, per name, where the value came from
    (FROM_SET, FROM_DATASET or FROM_METHOD). Raises HparamError on a bad name or value.
    """
    declared = get_method(method).hparams
    budget = {k: v for k, v in declared_budget(dataset).items() if k in declared}
    try:
        resolve(declared, budget, owner=method)
    except HparamError as exc:  # a declaration mistake of the dataset, not the user's
        raise HparamError(f"dataset {dataset!r} declares a bad training_budget: {exc}") from None
    overrides = dict(overrides or {})
    values = resolve(declared, {**budget, **overrides}, owner=method)
    sources = {k: FROM_SET if k in overrides else FROM_DATASET if k in budget else FROM_METHOD for k in values}
    return values, sources


def budget_of(dataset: str, values: Mapping[str, Any], sources: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The trial's budget as {name: {"value", "source"}}: epochs, batch size and what the dataset declares."""
    names = [*REPORTED_BUDGET, *(k for k in declared_budget(dataset) if k not in REPORTED_BUDGET)]
    return {k: {"value": values[k], "source": sources[k]} for k in names if k in values}


def budget_text(dataset: str, budget: Mapping[str, Mapping[str, Any]]) -> str:
    """One line, e.g. `epochs=30 (dataset german), batch_size=32 (dataset german)`."""
    where = {FROM_SET: "set for this trial", FROM_DATASET: f"dataset {dataset}", FROM_METHOD: "method default"}
    return ", ".join(f"{k}={v['value']} ({where[v['source']]})" for k, v in budget.items())


def refuse_unknown_keys(what: str, data: Mapping[str, Any], cls: type) -> None:
    """One ConfigError line when `data` (a dict that crossed from a driver to a worker) holds a key that is not a
    field of the dataclass `cls`."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                          f"{', '.join(sorted(known))} (a driver and a worker of different noharm versions?)")


@dataclass(frozen=True)
class TrialSpec:
    """One trial, fully resolved: what defines its numbers (and the in-trial selection of `noharm trial`).

    `hparams` holds every hyperparameter the method declares, `sources` where each came from. Build one
    with `TrialSpec.resolve` (from the values set for the trial); the constructor checks a spec, it does
    not resolve one.
    """

    dataset: str
    attribute: str
    method: str
    hparams: dict[str, Any]  # every declared name, resolved
    sources: dict[str, str]  # name -> FROM_SET / FROM_DATASET / FROM_METHOD
    seed: int = 0
    dataset_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "acc"  # validation metric for early stopping / best epoch
    precision: str = PRECISION.default
    channels_last: str = CHANNELS_LAST.default  # changes float rounding only
    min_group_size: int = 10
    # No-harm selection against ERM inside the trial (the CLI's default for non-ERM
    # methods). Sweeps leave these empty and compose stored predictions instead.
    selectors: tuple[str, ...] = ()
    selection_metric: str = SELECTION_METRIC.default
    erm_predictions: str | None = None  # an ERM run folder for the same dataset, attribute and seed
    # Also score and store the training split (default: validation and test only).
    train_predictions: bool = False

    @classmethod
    def resolve(cls, dataset: str, attribute: str, method: str, seed: int = 0,
                hparams: Mapping[str, Any] | None = None, **settings: Any) -> "TrialSpec":
        """The spec of a trial with `hparams` set for it; the others by the budget rule (`trial_hparams`).

        Raises HparamError on a bad hyperparameter name or value, ConfigError on a bad setting.
        """
        values, sources = trial_hparams(method, dataset, hparams)
        return cls(dataset=dataset, attribute=attribute, method=method, seed=seed, hparams=values,
                   sources=sources, **settings)

    def __post_init__(self) -> None:
        # Checks only (no precedence rule here): every declared name once, each value valid for its declaration.
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ConfigError(f"trial spec: seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        try:
            declared = get_method(self.method).hparams
        except KeyError as exc:
            raise ConfigError(f"trial spec: {exc.args[0] if exc.args else exc}") from None
        names, have = set(declared), set(self.hparams)
        if names != have:
            odd = sorted(have - names) or sorted(names - have)
            what = "unknown to" if have - names else "missing for"
            raise ConfigError(f"trial spec: hparams {', '.join(map(repr, odd))} {what} method {self.method!r}; "
                              "build specs with TrialSpec.resolve")
        try:
            values = {k: declared[k].cast(k, v) for k, v in self.hparams.items()}
        except HparamError as exc:
            raise ConfigError(f"trial spec: {exc}") from None
        if set(self.sources) != names or not set(self.sources.values()) <= set(SOURCES):
            raise ConfigError(f"trial spec: sources must name every hparam of {self.method!r} with one of "
                              f"{', '.join(SOURCES)}; got {self.sources!r}")
        object.__setattr__(self, "hparams", values)
        object.__setattr__(self, "sources", dict(self.sources))
        object.__setattr__(self, "selectors", tuple(self.selectors))
        self.validate()

    def validate(self) -> None:
        """The settings are known values (objective, precision, memory format, selection metric, selectors)."""
        canonical(self.objective)
        for setting in (PRECISION, CHANNELS_LAST, SELECTION_METRIC):
            setting.check(getattr(self, setting.name), ConfigError)
        unknown = [s for s in self.selectors if s not in STRATEGIES]
        if unknown:
            raise ConfigError(f"unknown selector {unknown[0]!r}; choose from: {', '.join(sorted(STRATEGIES))}")

    @property
    def set_hparams(self) -> dict[str, Any]:
        """The values set for this trial (`--set`, the suite's fixed or searched ones)."""
        return {k: v for k, v in self.hparams.items() if self.sources[k] == FROM_SET}

    @property
    def budget(self) -> dict[str, dict[str, Any]]:
        """Epochs, batch size and what the dataset declares, each with its source (see `budget_of`)."""
        return budget_of(self.dataset, self.hparams, self.sources)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-able values) that `from_dict` turns back into this spec."""
        out = asdict(self)
        out["selectors"] = list(self.selectors)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialSpec":
        """The spec `to_dict` wrote; an unknown or missing key, or a bad value, is one ConfigError line."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"trial spec: expected a mapping, got {type(data).__name__}")
        refuse_unknown_keys("trial spec", data, cls)
        missing = sorted(k for k in ("dataset", "attribute", "method", "hparams", "sources") if k not in data)
        if missing:
            raise ConfigError(f"trial spec: missing key(s) {', '.join(map(repr, missing))}")
        return cls(**dict(data))
