"""The GroupDataset interface: a table of samples plus their inputs, for one seed."""

from __future__ import annotations

import functools
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
# Out-of-domain splits: `shift:<name>`. No decision reads them (training, early stopping, search, selection);
# every trial scores them like test. Names are letters, digits, `_ . -`, so they pass into metric names as they are.
SHIFT_PREFIX = "shift:"
SHIFT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def is_shift(split: str) -> bool:
    """True for an out-of-domain split name, `shift:<name>`."""
    return isinstance(split, str) and split.startswith(SHIFT_PREFIX)


def valid_split(split: str) -> bool:
    """train, val, test, or `shift:<name>` with a name of letters, digits, `_ . -`."""
    return split in SPLITS or (is_shift(split) and bool(SHIFT_NAME.match(split[len(SHIFT_PREFIX):])))


def shift_splits(splits) -> list[str]:
    """The distinct shift splits among `splits`, sorted (the order every table and trial uses)."""
    return sorted({s for s in pd.unique(pd.Series(splits, dtype=object)) if is_shift(s)})


class DatasetError(ValueError):
    """Bad dataset input (unknown option value, missing file, malformed table); one clear line."""


@dataclass
class DataBundle:
    """One dataset materialised for one seed.

    `table` has columns `sample_id, split, y` and one column per sensitive
    attribute (string values); row i of `table` is row i of `x`.
    `x` is float32 [N, D] for tabular data or uint8 [N, C, H, W] for images
    (possibly a read-only memory map of the preprocessing cache).
    """

    name: str
    table: pd.DataFrame
    x: np.ndarray
    num_classes: int
    kind: str  # "tabular" | "image"
    class_names: list[str]
    attributes: list[str]
    # Per-channel statistics used to normalise uint8 images (ignored for tabular data).
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    # Train-time augmentation applied to batches: None, "flip", "crop_flip" or "resized_crop_flip".
    augment: str | None = None
    # What loading dropped and why, e.g. {"missing values": 3620}.
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.table) != len(self.x):
            raise DatasetError(f"{self.name}: table has {len(self.table)} rows but x has {len(self.x)}")
        missing = {"sample_id", "split", "y", *self.attributes} - set(self.table.columns)
        if missing:
            raise DatasetError(f"{self.name}: table lacks columns {sorted(missing)}")
        bad = [s for s in self.table["split"].unique() if not valid_split(s)]
        if bad:
            raise DatasetError(f"{self.name}: unknown split values {sorted(map(str, bad))}; expected "
                               f"{', '.join(SPLITS)} or {SHIFT_PREFIX}<name> (letters, digits, _ . -)")

    def split_indices(self, split: str) -> np.ndarray:
        """Row positions of one split."""
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    @property
    def shift_splits(self) -> list[str]:
        """The out-of-domain splits this bundle holds (`shift:<name>`), sorted."""
        return shift_splits(self.table["split"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


class GroupDataset(ABC):
    """A registered dataset: declares its targets and attributes, loads a DataBundle per seed.

    Subclasses set the class attributes below and implement `load`. Options are
    validated in `__init__` so a bad value fails before any work starts.

    Every dataset takes `split_file` (a CSV of `sample_id` and `split`, e.g. a split a paper
    published) and `split_id_column` (the file's id column when it is not `sample_id`): the
    file's split then replaces the dataset's own rule. A subclass's `load` is wrapped so
    that this holds for every dataset, plugins included; a loader that fits something on
    the training rows (the tabular feature scaling) asks `file_split` first.

    Besides train / val / test a table may hold out-of-domain splits `shift:<name>` (from a
    split file, or from a dataset's own shift options; see `noharm.datasets.shifts`). The
    wrapped `load` checks that they leave every group and class in train and val.
    """

    name: ClassVar[str] = ""  # set by the registry
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    kind: ClassVar[str] = "image"
    # target name -> description; attribute name -> description.
    targets: ClassVar[dict[str, str]] = {}
    attributes: ClassVar[dict[str, str]] = {}
    # attribute -> what a user must know before trusting it (e.g. a coding shown wrong), with the reference;
    # `noharm datasets list` prints it under the attributes.
    caveats: ClassVar[dict[str, str]] = {}
    default_target: ClassVar[str] = ""
    needs_root: ClassVar[bool] = False
    size_note: ClassVar[str] = ""  # e.g. "48,842 rows (45,222 after dropping missing values)"
    # The training budget every method needs on this dataset, e.g. {"epochs": 30, "batch_size": 32} for a
    # set too small for the methods' defaults (10 epochs at batch 128 are 50 optimizer steps on 600 rows).
    # It replaces a method's declared default of the same name and yields to any value the user (`--set`)
    # or a suite sets; `bench.trial.trial_hparams` is that one rule. Names a method does not declare are
    # skipped for that method.
    training_budget: ClassVar[dict[str, Any]] = {}
    # True for a loader that applies the split file itself (before fitting on train rows and before its own
    # shift splits); otherwise the split file replaces the loaded split after `load`.
    applies_split_file_itself: ClassVar[bool] = False

    def __init__(self, root: str | None = None, target: str | None = None, split_file: str | None = None,
                 split_id_column: str | None = None, **options: Any):
        self.root = root
        self.target = target or self.default_target
        if self.target not in self.targets:
            raise DatasetError(
                f"unknown target {self.target!r} for dataset {self.name!r}; choose one of: {', '.join(self.targets)}"
            )
        if self.needs_root and not root:
            raise DatasetError(f"dataset {self.name!r} needs --data-root (the folder holding its official files, "
                               f"or a folder holding {self.name}/)")
        if options:
            raise DatasetError(
                f"unknown option(s) {', '.join(sorted(options))} for dataset {self.name!r}"
            )
        self.split_file = str(Path(str(split_file)).expanduser().absolute()) if split_file else None
        self.split_id_column = str(split_id_column) if split_id_column else None
        if self.split_file and not Path(self.split_file).is_file():
            raise DatasetError(f"{self.name}: split_file {str(split_file)!r} not found; give the path of a CSV "
                               "with columns sample_id and split (train / val / test)")
        if self.split_id_column and not self.split_file:
            raise DatasetError(f"{self.name}: split_id_column needs split_file")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "load" in cls.__dict__:
            cls.load = _applying_split_file(cls.__dict__["load"])

    def file_split(self, sample_ids: Any, default: np.ndarray) -> np.ndarray:
        """The split file's split of these samples (one DatasetError line when the file does not fit), else `default`."""
        if not self.split_file:
            return default
        from noharm.datasets.splits import splits_from_file

        return splits_from_file(self.split_file, np.asarray(sample_ids), self.name, self.split_id_column)

    @classmethod
    def locate_root(cls, root: str | os.PathLike, **options: Any) -> str:
        """The folder holding this dataset's files, found from a data root a user gave (any command, any suite).

        A data root means one thing everywhere: the dataset's own folder, or a parent holding `<name>/`
        (`/data` for `/data/compas/`). The first of the two whose files `validate_files` finds wins, so a
        dataset that checks nothing takes the root as given. Options are checked first (their error wins).
        When neither folder holds the files, one DatasetError line: what is missing in the likelier folder
        (`<name>/` when it exists, else the root), then what was wrong with the other one.
        """
        given = Path(str(root)).expanduser().absolute()
        cls(root=str(given), **options)  # a bad option fails as itself, not as a missing file
        sub = given / cls.name
        if not given.is_dir():
            raise DatasetError(f"{cls.name}: data root {given} does not exist or is not a folder (also tried {sub})")
        problems: dict[Path, str] = {}
        for folder in (given, sub):
            if not folder.is_dir():
                problems[folder] = "not a folder"
                continue
            try:
                cls(root=str(folder), **options).validate_files()
            except DatasetError as exc:
                problems[folder] = str(exc)
                continue
            return str(folder)
        first, other = (sub, given) if sub.is_dir() else (given, sub)
        why = problems[other].removeprefix(f"{cls.name}: ").split("; ")[0]  # what, without the hint
        raise DatasetError(f"{problems[first]} (also tried {other}: {why})")

    @classmethod
    def shift_help(cls) -> str:
        """One line: the options that give this dataset out-of-domain splits besides a split file ("" for none)."""
        return ""

    def requests_shifts(self) -> bool:
        """True when the options ask for shift splits that only the data can check (unknown values, a group
        or class left without train or val rows): sweeps then load the data before starting anything.
        Here: a split file with `shift:<name>` rows; loaders with shift options of their own extend it."""
        if not self.split_file:
            return False
        from noharm.datasets.splits import read_split_file

        return bool(read_split_file(self.split_file, self.split_id_column)["split"].str.startswith(SHIFT_PREFIX).any())

    @abstractmethod
    def load(self, seed: int) -> DataBundle:
        """Read (or reuse from cache) the data and assign splits deterministically for `seed`."""

    def validate_files(self) -> None:
        """Raise DatasetError (one line: what is missing, where) if the official files are not there.

        Cheap: checks metadata files and folders, not every image. Sweeps call
        it for every dataset before starting anything.
        """

    def summary(self) -> dict[str, Any]:
        """What `noharm datasets list` shows."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "targets": list(self.targets),
            "attributes": list(self.attributes),
            "caveats": dict(self.caveats),
            "training_budget": dict(self.training_budget),
        }


def _applying_split_file(load: Callable[[GroupDataset, int], DataBundle]) -> Callable[[GroupDataset, int], DataBundle]:
    """`load`, followed by the split file's split when the dataset was given one (unless the loader applies
    it itself), then the checks every shift split must pass (`shifts.check_shift_splits`)."""
    if getattr(load, "applies_split_file", False):
        return load

    @functools.wraps(load)
    def wrapper(self: GroupDataset, seed: int) -> DataBundle:
        from noharm.datasets.shifts import check_shift_splits

        bundle = load(self, seed)
        if getattr(self, "split_file", None) and not self.applies_split_file_itself:
            table = bundle.table
            table["split"] = self.file_split(table["sample_id"], table["split"].to_numpy(object))
        check_shift_splits(bundle.table, bundle.attributes, self.name)
        return bundle

    wrapper.applies_split_file = True  # type: ignore[attr-defined]
    return wrapper
