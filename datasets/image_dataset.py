"""Shared machinery of the real image datasets: options, the decode-once cache, bad-image policy, splits.

A loader subclasses `ImageDataset`, locates its official files in
`validate_files`, turns its metadata into a `Samples` table in
`read_samples`, and picks a split rule; `load` does the rest identically for
every dataset.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from noharm.datasets.base import DataBundle, DatasetError, GroupDataset
from noharm.datasets.image_cache import default_cache_dir, load_or_build
from noharm.datasets.image_files import decode_image
from noharm.datasets.splits import grouped_assign, stratified_assign

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grey-level statistics for one-channel inputs (the ImageNet channel average).
GREY_MEAN = (0.449,)
GREY_STD = (0.226,)
MEDICAL_IMAGE_SIZE = 224
FACE_IMAGE_SIZE = 64
SHOWN_PROBLEMS = 5  # bad files named in the one-line error (all of them in `noharm datasets check`)


@dataclass
class Samples:
    """What a loader reads from its metadata, before any image is decoded.

    `table` has `sample_id`, `y`, one string column per attribute, `path` (the
    source file), and optionally `subject_id` (for grouped splits) and
    `official_split`. `dropped` counts rows removed on purpose (unknown sex,
    ...); `problems` lists defects found in the metadata (malformed names, ...).
    """

    table: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Source files whose metadata could not be read: (path, reason). They follow the
    # bad-image policy like an image that does not decode.
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def int_option(dataset: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer option within [low, high], or one DatasetError line."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise DatasetError(f"{dataset}: {name} must be an integer, got {value!r}")
    try:
        v = int(value)
    except ValueError:
        raise DatasetError(f"{dataset}: {name} must be an integer, got {value!r}") from None
    if v < low or (high is not None and v > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DatasetError(f"{dataset}: {name} must be {bound}, got {v}")
    return v


def bool_option(dataset: str, name: str, value: Any) -> bool:
    """A boolean option (true/false, also as text), or one DatasetError line."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise DatasetError(f"{dataset}: {name} must be true or false, got {value!r}")


class ImageDataset(GroupDataset):
    """A real image dataset read from its official layout under `root` and cached once decoded."""

    kind = "image"
    needs_root = True
    channels: ClassVar[int] = 3
    default_image_size: ClassVar[int] = MEDICAL_IMAGE_SIZE
    protocol_augment: ClassVar[str] = "crop_flip"
    mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, ...]] = IMAGENET_STD
    # Allowed values of the `split` option; the first is the default.
    split_choices: ClassVar[tuple[str, ...]] = ("random",)
    fractions: ClassVar[tuple[float, float, float]] = (0.8, 0.1, 0.1)

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        target: str | None = None,
        image_size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        skip_bad_images: bool = False,
        split: str | None = None,
        workers: int | None = None,
        **options: Any,
    ):
        super().__init__(root=str(root) if root else None, target=target, **options)
        n = self.name
        self.root_path = Path(str(root)).expanduser().absolute()
        self.image_size = int_option(n, "image_size", self.default_image_size if image_size is None else image_size, 8, 1024)
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir else default_cache_dir()
        self.skip_bad_images = bool_option(n, "skip_bad_images", skip_bad_images)
        self.split = self.split_choices[0] if split is None else str(split)
        if self.split not in self.split_choices:
            raise DatasetError(f"{n}: unknown split {split!r}; choose one of: {', '.join(self.split_choices)}")
        self.workers = None if workers is None else int_option(n, "workers", workers, 1, 256)
        # Filled by `load`: every defect found (one line each) and where the cache lives.
        self.problems: list[str] = []
        self.cache_folder: Path | None = None
        self.cache_built: bool | None = None

    # ---- what a loader provides -------------------------------------------------------------
    def check_layout(self) -> None:
        """Cheap presence check of the metadata files and image folders (DatasetError naming the path)."""

    def read_samples(self) -> Samples:
        """Read the metadata into a `Samples` table (no image decoded)."""
        raise NotImplementedError

    def class_names(self) -> list[str]:
        """Names of classes 0 and 1 of the current target."""
        return [f"not {self.target}", self.target]

    def decoder(self) -> Callable[[str], np.ndarray]:
        """Source path -> uint8 [C, S, S]."""
        return functools.partial(decode_image, size=self.image_size, channels=self.channels)

    def decode_settings(self) -> dict[str, Any]:
        """Everything that changes the decoded pixels (part of the cache key)."""
        return {"decoder": "pil-fit-bilinear/1", "size": self.image_size, "channels": self.channels}

    def assign_split(self, table: pd.DataFrame, seed: int) -> np.ndarray:
        """Split names per row for `seed`; default: stratified random split by attributes and label."""
        if self.split == "official":
            return table["official_split"].to_numpy(object)
        strata = table[[*self.attributes, "y"]]
        if "subject_id" in table.columns:
            return grouped_assign(table["subject_id"].to_numpy(), strata, self.fractions, seed)
        return stratified_assign(strata, self.fractions, seed)

    # ---- shared -------------------------------------------------------------------------------
    def validate_files(self) -> None:
        """The root exists and holds the official layout; one DatasetError line naming what is missing."""
        if not self.root_path.is_dir():
            raise DatasetError(f"{self.name}: data root {self.root_path} does not exist or is not a folder")
        self.check_layout()

    def rel(self, path: str | os.PathLike) -> str:
        """A path as shown to users: relative to the root when inside it."""
        p = str(path)
        root = str(self.root_path)
        return os.path.relpath(p, root) if p.startswith(root + os.sep) else p

    def load(self, seed: int) -> DataBundle:
        """Read metadata, decode (or reuse) the images, apply the bad-image policy, assign splits."""
        self.validate_files()
        samples = self.read_samples()
        table = samples.table.sort_values("sample_id", kind="stable").reset_index(drop=True)
        self._check_table(table, samples)
        cached = load_or_build(
            table["path"].tolist(), self.decoder(), (self.channels, self.image_size, self.image_size),
            self.decode_settings(), cache_dir=self.cache_dir, name=self.name, workers=self.workers,
        )
        self.cache_folder, self.cache_built = cached.folder, cached.built
        bad = [(self.rel(p), reason) for p, reason in [*samples.unreadable, *cached.problems]]
        self.problems = list(samples.problems) + [f"{p}: {reason}" for p, reason in bad]
        dropped = dict(samples.dropped)
        if bad:
            if not self.skip_bad_images:
                shown = "; ".join(f"{p} ({r})" for p, r in bad[:SHOWN_PROBLEMS])
                more = f" and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
                total = len(table) + len(samples.unreadable)
                raise DatasetError(
                    f"{self.name}: {len(bad)} of {total} images cannot be read: {shown}{more}; "
                    f"fix or remove them, or pass --option skip_bad_images=true to drop them "
                    f"(`noharm datasets check {self.name} --data-root {self.root_path}` lists them all)"
                )
            n_missing = sum(r == "missing" for _, r in bad)
            if n_missing:
                dropped["missing image"] = n_missing
            if len(bad) - n_missing:
                dropped["unreadable image"] = len(bad) - n_missing
            table = table[cached.ok].reset_index(drop=True)
        if table.empty:
            raise DatasetError(f"{self.name}: no readable images left under {self.root_path}")
        split = self.assign_split(table, int(seed))
        columns = ["sample_id", "y", *self.attributes] + (["subject_id"] if "subject_id" in table.columns else [])
        out = table[columns].copy()
        out.insert(1, "split", split)
        out["y"] = out["y"].astype(np.int64)
        return DataBundle(
            name=self.name, table=out, x=cached.x, num_classes=2, kind="image",
            class_names=self.class_names(), attributes=list(self.attributes),
            mean=self.mean[:self.channels], std=self.std[:self.channels],
            augment=self.protocol_augment, dropped=dropped,
        )

    def _check_table(self, table: pd.DataFrame, samples: Samples) -> None:
        if table.empty:
            reasons = [f"{k}: {v}" for k, v in samples.dropped.items()]
            if samples.unreadable:
                path, why = samples.unreadable[0]
                reasons.append(f"unreadable files: {len(samples.unreadable)}, e.g. {self.rel(path)} ({why})")
            reasons = ", ".join(reasons) or "the metadata lists none"
            raise DatasetError(f"{self.name}: no usable samples under {self.root_path} ({reasons})")
        dup = table["sample_id"].duplicated()
        if dup.any():
            raise DatasetError(f"{self.name}: sample id {table['sample_id'][dup].iloc[0]!r} appears twice in the metadata")
        for a in self.attributes:
            values = table[a].astype(str)
            bad = values[values.str.contains("[=+]", regex=True)]
            if len(bad):  # a loader bug, not a user error: group names must be valid metric names
                raise DatasetError(f"{self.name}: attribute {a} value {bad.iloc[0]!r} contains '=' or '+'")
            table[a] = values
        if not table["y"].isin([0, 1]).all():
            raise DatasetError(f"{self.name}: labels must be 0/1 (loader bug)")
