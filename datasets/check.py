"""`noharm datasets check`: load a dataset as a trial would, without training, and report what it holds.

Reports counts per split x group x label for each attribute, what loading dropped
and why, and every problem found: unreadable or missing images, malformed
names, groups absent from a split, groups with a single label in a split (their
AUC is undefined), and groups too small to trust. Out-of-domain `shift:<name>`
splits get their own rows (a group absent from one is a note, not a problem).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from noharm.datasets import DATASETS, resolve_root
from noharm.datasets.base import SPLITS
from noharm.datasets.grouping import Grouping
from noharm.datasets.image_dataset import ImageDataset

MIN_GROUP_SIZE = 10  # the trial's default: below it, per-group metrics are noise


@dataclass
class DatasetReport:
    """What `check_dataset` found."""

    name: str
    n_samples: int
    input_shape: tuple[int, ...]
    counts: dict[str, pd.DataFrame]  # attribute spec -> rows (split, group), columns y=<class>, total
    dropped: dict[str, int]
    problems: list[str]
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong (small groups, cache use)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(
    name: str,
    root: str | None = None,
    attribute: str | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> DatasetReport:
    """Load `name` (bad images skipped and listed rather than fatal) and tabulate its groups.

    `root` is a data root as everywhere: the dataset's own folder or a parent holding `<name>/`
    (an embedded dataset ignores it). Raises DatasetError for input that makes loading impossible
    (missing root, missing metadata, unknown attribute, malformed tables).
    """
    cls = DATASETS.get(name)
    opts = dict(options or {})
    if issubclass(cls, ImageDataset):
        opts.setdefault("skip_bad_images", True)  # list every bad file instead of stopping at the first
    notes: list[str] = []
    root = root if root is not None else opts.pop("root", None)
    if root is not None:
        found = resolve_root(name, root, **{k: v for k, v in opts.items() if k != "root"})
        if found:
            opts["root"] = found
        notes.append(f"data root: {found}" if found else f"{name} is embedded: the data root is not read")
    dataset = cls(**opts)
    dataset.validate_files()
    bundle = dataset.load(seed)
    specs = [attribute] if attribute else list(bundle.attributes)
    problems = list(getattr(dataset, "problems", []))
    notes += list(getattr(dataset, "notes", []))  # facts a loader reports (row counts, caches)
    if getattr(dataset, "cache_folder", None) is not None:
        notes.append(f"image cache {'built' if dataset.cache_built else 'reused'}: {dataset.cache_folder}")
    counts: dict[str, pd.DataFrame] = {}
    for spec in specs:
        grouping = Grouping.from_table(bundle.table, spec, bundle.attributes, MIN_GROUP_SIZE)
        table = pd.DataFrame({
            "split": pd.Categorical(bundle.table["split"], categories=[*SPLITS, *bundle.shift_splits]),
            "group": pd.Categorical.from_codes(grouping.ids, list(grouping.names)),
            "y": pd.Categorical(bundle.table["y"], categories=range(bundle.num_classes)),
        })
        crosstab = pd.crosstab([table["split"], table["group"]], table["y"], dropna=False)
        crosstab.columns = [f"y={bundle.class_names[c]}" for c in crosstab.columns]
        crosstab["total"] = crosstab.sum(axis=1)
        counts[grouping.spec] = crosstab
        for (split, group), row in crosstab.iterrows():
            if row["total"] == 0 and split not in SPLITS:  # a domain need not hold every group
                notes.append(f"{grouping.spec}: group {group} has no sample in {split}")
            elif row["total"] == 0:
                problems.append(f"{grouping.spec}: group {group} has no sample in {split}")
            elif (row.drop("total") > 0).sum() == 1 and bundle.num_classes > 1:
                only = row.drop("total").idxmax()
                problems.append(f"{grouping.spec}: group {group} has only {only} in {split} (its AUC is undefined)")
        if grouping.small_groups:
            notes.append(f"{grouping.spec}: groups below {MIN_GROUP_SIZE} samples in some split: "
                         f"{', '.join(grouping.small_groups)}")
    return DatasetReport(
        name=name, n_samples=len(bundle.table), input_shape=bundle.input_shape, counts=counts,
        dropped=dict(bundle.dropped), problems=problems, notes=notes,
    )


def format_report(report: DatasetReport) -> str:
    """The report as plain text, one table per attribute."""
    lines = [f"{report.name}: {report.n_samples} samples, input {' x '.join(map(str, report.input_shape))}"]
    if report.dropped:
        lines.append("dropped: " + "; ".join(f"{why}: {n}" for why, n in report.dropped.items()))
    else:
        lines.append("dropped: nothing")
    for spec, table in report.counts.items():
        lines += ["", f"attribute {spec}: counts per split x group x label", table.to_string()]
    lines.append("")
    if report.problems:
        lines.append(f"problems ({len(report.problems)}):")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("problems: none")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
