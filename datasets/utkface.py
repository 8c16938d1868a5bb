"""UTKFace faces labelled through their file names (Zhang, Song & Qi, 2017).

Layout: image files named `<age>_<gender>_<race>_<datetime>.jpg` (the aligned-and-cropped release
appends `.chip.jpg`: `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg`), in `UTKFace/` under the root or
directly in the root (option `folder` names another subfolder). gender: 0 male, 1 female; race:
0 White, 1 Black, 2 Asian, 3 Indian, 4 Others. Names that do not fit (the release has a few with a
missing field) are skipped, counted in `dropped` and listed as problems; a well-formed name with
an unknown gender or race code fails loudly.
Targets: `gender` (Female) or `race` (non-White). Attributes: `race` (White / non-White), `race5`,
`gender`, `age` (0-19 / 20-39 / 40-59 / 60-plus). Split 80/10/10 stratified by all attributes and
the label, seeded. Face protocol: 64 px, random resized crop and flip.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import FACE_IMAGE_SIZE, ImageDataset, Samples
from noharm.datasets.image_files import list_files

# age, gender, race, capture time; then .jpg, optionally followed by .chip.jpg.
NAME = re.compile(r"^(\d{1,3})_(\d+)_(\d+)_(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)
GENDERS = {0: "Male", 1: "Female"}
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
AGE_BINS = [(0, 19, "0-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 10**6, "60-plus")]


def age_bin(age: np.ndarray) -> np.ndarray:
    """Ages in years -> 0-19 / 20-39 / 40-59 / 60-plus."""
    edges = np.array([20, 40, 60])
    return np.array([b[2] for b in AGE_BINS], dtype=object)[np.searchsorted(edges, age, side="right")]


@register_dataset("utkface")
class UTKFace(ImageDataset):
    description = "UTKFace faces with age, gender and race from their file names (local copy)"
    citation = "Zhang, Song & Qi (2017), Age Progression/Regression by Conditional Adversarial Autoencoder, CVPR"
    targets = {"gender": "Female (1) vs Male (0)", "race": "non-White (1) vs White (0)"}
    default_target = "gender"
    attributes = {
        "race": "White / non-White",
        "race5": "White / Black / Asian / Indian / Others",
        "gender": "Female / Male",
        "age": "0-19 / 20-39 / 40-59 / 60-plus",
    }
    size_note = "23,708 aligned and cropped faces (a few with malformed names skipped)"
    default_image_size = FACE_IMAGE_SIZE
    protocol_augment = "resized_crop_flip"

    def __init__(self, root=None, target=None, folder: str | None = None, **options):
        self._folder = folder
        super().__init__(root=root, target=target, **options)

    def _image_folder(self):
        if self._folder:
            f = self.root_path / self._folder
            if not f.is_dir():
                raise DatasetError(f"{self.name}: image folder {f} not found (option folder)")
            return f
        for candidate in (self.root_path / "UTKFace", self.root_path):
            if candidate.is_dir():
                return candidate
        raise DatasetError(f"{self.name}: folder {self.root_path} not found; point --data-root at the UTKFace images")

    def check_layout(self) -> None:
        folder = self._image_folder()
        if not any(NAME.match(n) for n in _names(folder, limit=2000)):
            raise DatasetError(
                f"{self.name}: no file named <age>_<gender>_<race>_<datetime>.jpg in {folder}; "
                "point --data-root at the folder holding UTKFace/ (or the images themselves)"
            )

    def class_names(self) -> list[str]:
        return ["Male", "Female"] if self.target == "gender" else ["White", "non-White"]

    def read_samples(self) -> Samples:
        folder = self._image_folder()
        files = list_files(folder)
        rows, problems, dropped = [], [], {}
        for name in sorted(files):
            m = NAME.match(name)
            if m is None:
                dropped["malformed file name"] = dropped.get("malformed file name", 0) + 1
                problems.append(f"{self.rel(files[name])}: malformed file name (expected <age>_<gender>_<race>_<datetime>.jpg)")
                continue
            age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
            # A well-formed name with an unknown code means another labelling scheme: fail loudly.
            if gender not in GENDERS or race not in RACES:
                field, code = ("gender", gender) if gender not in GENDERS else ("race", race)
                raise DatasetError(
                    f"{self.name}: unexpected {field} code {code} in file name {self.rel(files[name])}; "
                    f"UTKFace codes gender 0-1 and race 0-4; remove the file or fix its name"
                )
            rows.append((name, age, gender, race, str(files[name])))
        df = pd.DataFrame(rows, columns=["name", "age", "gender", "race", "path"])
        y = df["gender"] if self.target == "gender" else (df["race"] != 0).astype(np.int64)
        table = pd.DataFrame({
            "sample_id": df["name"],
            "y": y.astype(np.int64),
            "race": np.where(df["race"] == 0, "White", "non-White"),
            "race5": df["race"].map(RACES),
            "gender": df["gender"].map(GENDERS),
            "age": age_bin(df["age"].to_numpy()),
            "path": df["path"],
        })
        return Samples(table=table, dropped=dropped, problems=problems)


def _names(folder, limit: int) -> list[str]:
    """Up to `limit` file names in `folder` (a cheap presence check)."""
    import os

    out = []
    with os.scandir(folder) as it:
        for entry in it:
            out.append(entry.name)
            if len(out) >= limit:
                break
    return out
