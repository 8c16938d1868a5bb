"""FairFace faces balanced over seven race groups (Kärkkäinen & Joo, 2021), read from the official files.

Layout under the root:
    fairface_label_train.csv   file, age, gender, race, service_test   (file: train/<n>.jpg)
    fairface_label_val.csv     same columns                            (file: val/<n>.jpg)
    train/, val/               the images of either release (padding 0.25 or 1.25)
Target `gender` (Female). Attributes: `race` (White / non-White), `race7` (the seven groups),
`age` (0-19 / 20-39 / 40-59 / 60-plus, from FairFace's nine age brackets). Split: official (default:
the official val set is the test split; validation is carved from the official train set, stratified,
`val_fraction` 0.1, seeded) or random (80/10/10 of both, stratified, seeded).
Face protocol: 64 px, random resized crop and flip.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import FACE_IMAGE_SIZE, ImageDataset, Samples
from noharm.datasets.image_files import check_values, read_table
from noharm.datasets.splits import stratified_assign

CSVS = {"train": "fairface_label_train.csv", "val": "fairface_label_val.csv"}
GENDERS = {"Male": 0, "Female": 1}
RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
AGES = {
    "0-2": "0-19", "3-9": "0-19", "10-19": "0-19", "20-29": "20-39", "30-39": "20-39",
    "40-49": "40-59", "50-59": "40-59", "60-69": "60-plus", "more than 70": "60-plus",
}


@register_dataset("fairface")
class FairFace(ImageDataset):
    description = "FairFace faces balanced over seven race groups (local copy)"
    citation = "Kärkkäinen & Joo (2021), FairFace, WACV; arXiv:1908.04913"
    targets = {"gender": "Female (1) vs Male (0)"}
    default_target = "gender"
    attributes = {
        "race": "White / non-White",
        "race7": "White / Black / Latino_Hispanic / East Asian / Southeast Asian / Indian / Middle Eastern",
        "age": "0-19 / 20-39 / 40-59 / 60-plus",
    }
    size_note = "97,698 faces: 86,744 in the official train set, 10,954 in the official val set (used as test)"
    default_image_size = FACE_IMAGE_SIZE
    protocol_augment = "resized_crop_flip"
    split_choices = ("official", "random")

    def __init__(self, root=None, target=None, val_fraction: float = 0.1, **options):
        super().__init__(root=root, target=target, **options)
        try:
            self.val_fraction = float(val_fraction)
        except (TypeError, ValueError):
            self.val_fraction = -1.0
        if not 0.0 < self.val_fraction < 1.0:
            raise DatasetError(f"{self.name}: val_fraction must be a number in (0, 1), got {val_fraction!r}")

    def check_layout(self) -> None:
        for part, csv in CSVS.items():
            if not (self.root_path / csv).is_file():
                raise DatasetError(f"{self.name}: label file {self.root_path / csv} not found; "
                                   "point --data-root at the folder holding the FairFace csv files and train/, val/")
            if not (self.root_path / part).is_dir():
                raise DatasetError(
                    f"{self.name}: image folder {self.root_path / part} not found; unzip the FairFace images there"
                )

    def class_names(self) -> list[str]:
        return ["Male", "Female"]

    def read_samples(self) -> Samples:
        frames = []
        for part, csv in CSVS.items():
            df = read_table(self.root_path / csv, ["file", "age", "gender", "race"], self.name, dtype=str)
            for col, allowed in (("gender", GENDERS), ("race", RACES), ("age", AGES)):
                df[col] = df[col].str.strip()
                check_values(df[col], allowed, col, csv, self.name)
            frames.append(df.assign(official_split="test" if part == "val" else "train"))
        meta = pd.concat(frames, ignore_index=True)
        table = pd.DataFrame({
            "sample_id": meta["file"].to_numpy(),
            "y": meta["gender"].map(GENDERS).astype(np.int64).to_numpy(),
            "race": np.where(meta["race"] == "White", "White", "non-White"),
            "race7": meta["race"].to_numpy(),
            "age": meta["age"].map(AGES).to_numpy(),
            "official_split": meta["official_split"].to_numpy(),
            "path": [str(self.root_path / f) for f in meta["file"]],
        })
        return Samples(table=table)

    def assign_split(self, table: pd.DataFrame, seed: int) -> np.ndarray:
        if self.split == "random":
            return super().assign_split(table, seed)
        split = table["official_split"].to_numpy(object).copy()
        train = split == "train"
        strata = table.loc[train, [*self.attributes, "y"]]
        split[train] = stratified_assign(strata, (1 - self.val_fraction, self.val_fraction), seed, names=("train", "val"))
        return split
