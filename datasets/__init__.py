"""What a sample is: tables of (x, y, sensitive attributes, split), one registered loader per dataset."""

import os

from noharm.datasets.base import DataBundle, DatasetError, GroupDataset
from noharm.datasets.grouping import Grouping
from noharm.registry import Registry, UnknownNameError

DATASETS: Registry[type[GroupDataset]] = Registry("dataset", entry_point_group="noharm.datasets")
register_dataset = DATASETS.register


def get_dataset(name: str, **options) -> GroupDataset:
    """Instantiate the dataset registered as `name` with its options (root, target, image_size, ...).

    A `root` may be the dataset's own folder or a parent holding `<name>/` (`resolve_root`).
    """
    cls = DATASETS.get(name)
    if cls.needs_root and options.get("root"):
        options["root"] = resolve_root(name, options.pop("root"), **options)
    return cls(**options)


def resolve_root(name: str, root: str | os.PathLike | None, **options) -> str | None:
    """The absolute folder holding dataset `name`'s files, from a data root (its own folder or a parent of `<name>/`).

    None when no root is given or the dataset is embedded (it ignores any root); one DatasetError line
    naming every path tried when neither folder holds the files (`GroupDataset.locate_root`).
    """
    cls = DATASETS.get(name)
    if root is None or str(root) == "" or not cls.needs_root:
        return None
    return cls.locate_root(root, **options)


# Built-in datasets (embedded and real-data loaders) register themselves on import.
from noharm.datasets import (  # noqa: E402,F401
    acs_income, adult, bank, celeba, compas, digits_shift, fairface, fitzpatrick17k, german, ham10000, harvard_gf,
    mimic_cxr, utkface,
)

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetError",
    "GroupDataset",
    "Grouping",
    "UnknownNameError",
    "get_dataset",
    "register_dataset",
    "resolve_root",
]
