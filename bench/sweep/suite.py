"""Suite files: YAML describing datasets x attributes x methods x seeds, validated at the door.

`load_suite(path)` returns a `Suite` whose every name is checked against the
registries (datasets, attributes, targets, dataset options, methods,
hyperparameters, objective, selectors). Every mistake found becomes one line
naming the file and the field; all of them are raised together as one
`ConfigError`, which the CLI prints and exits 2 on.

The format (the README section "Suite files" has the long version)::

    name: default
    datasets:
      - {name: adult, attributes: [sex, race, sex+race], search: [sex]}
      - {name: digits-shift, attributes: [style], hparams: {backbone: cnn}}
    methods: all                 # or [erm, {fairsde: {lambda_disc: 0.1}}, ...]
    hparams: {epochs: 3}         # fixed for every method that declares them
    seeds: [0, 1, 2]
    search: {trials: 4, objective: val/worst_group_auc}
    selectors: [greedy, ip-gap, ip-utility]
    selection: {metric: accuracy, wrap: experts}
    resources: {cpu: 1, gpu: auto}   # per trial; gpu auto: one per trial when there are GPUs
    max_concurrent: 2            # default: as many trials at once as the resources allow
    retries: 1
    tracking: {uri: null, experiment: null}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from noharm.bench.errors import ConfigError
from noharm.bench.objectives import canonical
from noharm.datasets import DATASETS, DatasetError, get_dataset, resolve_root
from noharm.datasets.shifts import check_requested_shifts
from noharm.methods import METHODS
from noharm.methods.hparams import HparamError, resolve
from noharm.methods.selection import STRATEGIES
from noharm.settings import CHANNELS_LAST, PRECISION, SELECTION_METRIC

ALL = "all"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """Unknown fields are mistakes (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetEntry(Strict):
    name: str
    attributes: list[str] = Field(min_length=1)
    # Constructor options of the dataset (root, target, image_size, ...).
    options: dict[str, Any] = Field(default_factory=dict)
    # Shortcut for options.target.
    target: str | None = None
    # Shortcut for options.shift (tabular datasets): `COLUMN:VALUE[,VALUE...]` or {COLUMN: [VALUE, ...]};
    # those rows become out-of-domain splits `shift:<VALUE>`, scored by every trial, read by no decision.
    shift: str | dict[str, Any] | None = None
    # Fixed hyperparameters for every method on this dataset (e.g. backbone: cnn).
    hparams: dict[str, Any] = Field(default_factory=dict)
    # Attributes that get a hyperparameter search; the others reuse the best settings
    # of the first searched attribute. None: every attribute is searched.
    search: list[str] | None = None

    @property
    def resolved_options(self) -> dict[str, Any]:
        opts = dict(self.options)
        if self.target is not None:
            opts["target"] = self.target
        if self.shift is not None:
            opts["shift"] = self.shift
        return opts

    @property
    def label(self) -> str:
        """`name`, or `name[target]` when a target is chosen (CelebA has several)."""
        target = self.resolved_options.get("target")
        return f"{self.name}[{target}]" if target else self.name


class MethodEntry(Strict):
    name: str
    hparams: dict[str, Any] = Field(default_factory=dict)


class SearchSettings(Strict):
    # Optuna trials per (dataset, attribute, method); 0 runs the declared defaults.
    trials: int = Field(0, ge=0)
    # Validation objective for the search, early stopping and the best epoch.
    objective: str = "acc"
    # Seed the search runs on (default: the first of `seeds`).
    seed: int | None = Field(None, ge=0)


class SelectionSettings(Strict):
    metric: SELECTION_METRIC.literal = Field(SELECTION_METRIC.default, description=SELECTION_METRIC.help)
    # experts: compose methods that expose per-group experts; all: also wrap every other
    # method's primary candidate against ERM.
    wrap: Literal["experts", "all"] = "experts"


class Resources(Strict):
    """What one trial asks Ray for (`bench.sweep.capacity`: the sweep runs as many at once as fit)."""

    cpu: float = Field(1.0, gt=0)
    # GPUs per trial: a number (0.25: four trials share a GPU), or auto: one when the cluster has GPUs.
    gpu: float | str = Field("auto", description="GPUs per trial, or auto")

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, gpu: Any) -> float | str:
        if gpu == "auto":
            return gpu
        if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu < 0:
            raise ValueError("must be a number of GPUs per trial (0, 0.25, 1, ...) or auto")
        return float(gpu)


class TrackingSettings(Strict):
    uri: str | None = Field(None, min_length=1)
    experiment: str | None = Field(None, min_length=1)


class Suite(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    datasets: list[DatasetEntry]
    methods: list[MethodEntry]
    hparams: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int]
    search: SearchSettings = Field(default_factory=SearchSettings)
    selectors: list[str] = Field(default_factory=list)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    retries: int = Field(1, ge=0)
    precision: PRECISION.literal = Field(PRECISION.default, description=PRECISION.help)
    # Memory format of image models (tabular trials ignore it): rounding only, but a different number stream,
    # so a value other than `auto` enters the trial key.
    channels_last: CHANNELS_LAST.literal = Field(CHANNELS_LAST.default, description=CHANNELS_LAST.help)
    min_group_size: int = Field(10, ge=1)
    # Also store every trial's training-split predictions (default: validation and test only).
    train_predictions: bool = False
    # Runs that keep their model.pt: evaluate runs (what stress re-scoring reads), all runs, or none.
    keep_models: Literal["evaluate", "all", "none"] = "evaluate"
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    # Where the suite came from (for messages); not part of the file.
    source: str = ""

    @field_validator("channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on` / `off` as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be non-negative integers")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat a value: {seeds}")
        return seeds

    @property
    def search_seed(self) -> int:
        return self.search.seed if self.search.seed is not None else self.seeds[0]

    def method(self, name: str) -> MethodEntry:
        return next(m for m in self.methods if m.name == name)


# ---- loading ------------------------------------------------------------------------------------

def load_suite(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Suite:
    """Read, validate and resolve a suite file; raises ConfigError with one line per mistake.

    `data_root` (the CLI's --data-root) anchors relative dataset roots; a dataset
    that needs files and names no root gets `<data_root>/<dataset name>`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file {str(path)!r} not found; give the path of a suite YAML file "
                          f"(see bench/suites/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the suite file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the suite file ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # safe_load's loader, with duplicate keys refused
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_suite(raw, str(path), data_root)


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping (PyYAML keeps the last one silently,
    so a suite with two `seeds:` lines would run something other than what its author reads)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is repeated (first on line {seen[key]}); keep one of them",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def parse_suite(raw: Any, source: str = "<suite>", data_root: str | os.PathLike | None = None) -> Suite:
    """Validate an already-parsed suite mapping (see `load_suite`)."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a suite is a YAML mapping with name, datasets, methods, seeds; "
                          f"got {type(raw).__name__}")
    raw = dict(raw)
    raw["source"] = source
    methods_raw = raw.get("methods", None)
    raw["methods"] = _expand_methods(methods_raw, source, errors)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        errors.extend(_pydantic_lines(exc, source))
        raise ConfigError("\n".join(errors)) from None
    errors.extend(_check_registries(suite, source))
    if errors:
        raise ConfigError("\n".join(errors))
    return _resolve_roots(suite, data_root)


def _expand_methods(raw: Any, source: str, errors: list[str]) -> list[dict[str, Any]]:
    """`all`, or a list of names / `all` / {name: {hparams}} items, into MethodEntry dicts."""
    if raw is None:
        errors.append(f"{source}: methods: missing; list method names or write `methods: all`")
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        errors.append(f"{source}: methods: expected `all` or a list of method names, got {type(raw).__name__}")
        return []
    out: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        where = f"{source}: methods[{i}]" if not isinstance(raw, str) else f"{source}: methods"
        if item == ALL:
            for name in METHODS.names():
                out.setdefault(name, {"name": name, "hparams": {}})
            continue
        if isinstance(item, str):
            name, hparams = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, hparams = next(iter(item.items()))
            hparams = {} if hparams is None else hparams
            if not isinstance(hparams, dict):
                errors.append(f"{where}.{name}: expected a mapping of hyperparameters, got {hparams!r}")
                continue
        else:
            errors.append(f"{where}: expected a method name or {{name: {{hparam: value}}}}, got {item!r}")
            continue
        if not isinstance(name, str):
            errors.append(f"{where}: method name must be text, got {name!r}")
            continue
        if name in out and not isinstance(raw, str) and out[name]["hparams"] and hparams:
            errors.append(f"{where}: method {name!r} is listed twice with overrides; merge them into one entry")
            continue
        out[name] = {"name": name, "hparams": {**out.get(name, {}).get("hparams", {}), **hparams}}
    return list(out.values())


def _pydantic_lines(exc: ValidationError, source: str) -> list[str]:
    lines = []
    for err in exc.errors():
        field = _field_path(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1])
            valid = ", ".join(f for f in parent.model_fields if f != "source") if parent else ""
            msg = f"unknown field{'; valid fields: ' + valid if valid else ''}"
        elif err["type"] == "missing":
            msg = "missing (required)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in ("string_pattern_mismatch",):
                msg += f" (got {err['input']!r})"
            if err["type"] == "string_pattern_mismatch":
                msg = f"must be letters, digits, '_', '.' or '-' (got {err['input']!r})"
        lines.append(f"{source}: {field}: {msg}")
    return lines


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class a location points into (for listing valid fields)."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _check_registries(suite: Suite, source: str) -> list[str]:
    """Names and values checked against the dataset and method registries, one line per mistake."""
    errors: list[str] = []
    if not suite.datasets:
        errors.append(f"{source}: datasets: empty grid; list at least one dataset")
    if not suite.methods:
        errors.append(f"{source}: methods: empty grid; list at least one method or write `methods: all`")
    if not suite.seeds:
        errors.append(f"{source}: seeds: empty grid; list at least one seed, e.g. [0, 1, 2]")

    labels: dict[str, int] = {}
    for i, entry in enumerate(suite.datasets):
        where = f"{source}: datasets[{i}]"
        if entry.name not in DATASETS:
            errors.append(f"{where}.name: unknown dataset {entry.name!r}; choose one of: {', '.join(DATASETS.names())}")
            continue
        if entry.label in labels:
            errors.append(f"{where}: dataset {entry.label!r} is listed twice (also datasets[{labels[entry.label]}]); "
                          "merge the attributes into one entry")
        labels[entry.label] = i
        cls = DATASETS.get(entry.name)
        seen_attrs = set()
        for j, attr in enumerate(entry.attributes):
            parts = attr.split("+")
            unknown = [a for a in parts if a not in cls.attributes]
            if unknown or not attr:
                errors.append(f"{where}.attributes[{j}]: unknown attribute {unknown[0] if unknown else attr!r} of "
                              f"dataset {entry.name!r}; choose from: {', '.join(cls.attributes)} (join with '+')")
            elif len(set(parts)) != len(parts):
                twice = next(a for a in parts if parts.count(a) > 1)
                errors.append(f"{where}.attributes[{j}]: {attr!r} joins {twice!r} with itself; "
                              "name each attribute once in an intersection")
            if attr in seen_attrs:
                errors.append(f"{where}.attributes[{j}]: attribute {attr!r} is listed twice")
            seen_attrs.add(attr)
        for j, attr in enumerate(entry.search or []):
            if attr not in entry.attributes:
                errors.append(f"{where}.search[{j}]: {attr!r} is not one of this entry's attributes "
                              f"({', '.join(entry.attributes)})")
        options = entry.resolved_options
        if "root" not in options and cls.needs_root:
            options["root"] = "<data-root>"  # checked for presence later, by validate_files
        try:
            cls(**options)
        except DatasetError as exc:
            errors.append(f"{where}.options: {exc}")
        except TypeError as exc:
            errors.append(f"{where}.options: {exc}")

    method_classes = {}
    for i, m in enumerate(suite.methods):
        if m.name not in METHODS:
            errors.append(f"{source}: methods[{i}]: unknown method {m.name!r}; choose one of: {', '.join(METHODS.names())}")
            continue
        cls = METHODS.get(m.name)
        method_classes[m.name] = cls
        try:
            resolve(cls.hparams, m.hparams, owner=m.name)
        except HparamError as exc:
            errors.append(f"{source}: methods[{i}].{m.name}: {exc}")

    # Shared overrides (top level and per dataset) apply to the methods that declare them.
    scopes = [("hparams", suite.hparams)] + [(f"datasets[{i}].hparams", d.hparams) for i, d in enumerate(suite.datasets)]
    for where, overrides in scopes:
        for name, value in overrides.items():
            declaring = [c for c in method_classes.values() if name in c.hparams]
            if method_classes and not declaring:
                errors.append(f"{source}: {where}.{name}: no listed method declares hparam {name!r}; "
                              "check the spelling (`noharm methods list -v`)")
                continue
            for cls in declaring:
                try:
                    cls.hparams[name].cast(name, value)
                except HparamError as exc:
                    errors.append(f"{source}: {where}.{name}: {exc}")
                    break

    try:
        canonical(suite.search.objective)
    except ConfigError as exc:
        errors.append(f"{source}: search.objective: {exc}")
    for i, s in enumerate(suite.selectors):
        if s not in STRATEGIES:
            errors.append(f"{source}: selectors[{i}]: unknown selector {s!r}; choose from: {', '.join(STRATEGIES)}")
    if suite.search.seed is not None and suite.search.seed not in suite.seeds:
        errors.append(f"{source}: search.seed: {suite.search.seed} is not one of seeds {suite.seeds}")
    return errors


def _resolve_roots(suite: Suite, data_root: str | os.PathLike | None) -> Suite:
    """Absolute dataset roots: relative ones anchored at data_root, missing ones data_root itself; then, for a
    dataset with files, the folder holding them (the root or its `<name>/`, `GroupDataset.locate_root`)."""
    entries = []
    for entry in suite.datasets:
        options = dict(entry.options)
        root = options.get("root")
        if root is not None and not os.path.isabs(os.path.expanduser(str(root))):
            options["root"] = str(Path(data_root or ".").expanduser().absolute() / str(root))
        elif root is not None:
            options["root"] = str(Path(str(root)).expanduser())
        elif data_root is not None and DATASETS.get(entry.name).needs_root:
            options["root"] = str(Path(data_root).expanduser().absolute())
        if options.get("root") and DATASETS.get(entry.name).needs_root:
            try:
                options["root"] = resolve_root(entry.name, **{**entry.resolved_options, **options})
            except DatasetError:
                pass  # kept as given: check_files repeats the search and names every path tried
        if options.get("split_file"):  # trials may run in another working directory
            options["split_file"] = str(Path(str(options["split_file"])).expanduser().absolute())
        entries.append(entry.model_copy(update={"options": options}))
    return suite.model_copy(update={"datasets": entries})


def check_files(suite: Suite) -> None:
    """Every dataset's official files are where the suite says (DatasetError naming the first missing path),
    and every shift split the options ask for fits the data (`check_requested_shifts`: known values, every
    group and class left in train and val, on every seed).

    Called before any trial starts, so a wrong --data-root fails in a second.
    """
    for entry in suite.datasets:
        options = entry.resolved_options
        try:
            dataset = get_dataset(entry.name, **options)
        except DatasetError as exc:
            raise DatasetError(f"{suite.source}: dataset {entry.label}: {exc}") from None
        dataset.validate_files()
        try:
            check_requested_shifts(dataset, entry.attributes, suite.seeds, suite.min_group_size)
        except DatasetError as exc:
            raise DatasetError(f"{suite.source}: dataset {entry.label}: {exc}") from None


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
