"""What a sample is: tables of (x, y, sensitive attributes, split), one registered loader per dataset."""

from noharm.datasets.base import DataBundle, DatasetError, GroupDataset
from noharm.datasets.grouping import Grouping
from noharm.registry import Registry, UnknownNameError

DATASETS: Registry[type[GroupDataset]] = Registry("dataset", entry_point_group="noharm.datasets")
register_dataset = DATASETS.register


def get_dataset(name: str, **options) -> GroupDataset:
    """Instantiate the dataset registered as `name` with its options (root, target, image_size, ...)."""
    return DATASETS.get(name)(**options)


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
]
