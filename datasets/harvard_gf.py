"""Harvard-GF: OCT retinal nerve fibre layer thickness (RNFLT) maps for glaucoma detection (Luo et al., 2024).

Layout: one `.npz` per patient in the official split folders `train/`, `val/`, `test/` (also accepted:
`Training/`, `Validation/`, `Test/`, optionally inside `Dataset/`). Each file holds `rnflt` (a 2-D
thickness map in micrometres, 200 x 200), `glaucoma` (0/1), `male` (0 female, 1 male; `gender` is
accepted too) and `race` (0 Asian, 1 Black, 2 White; the strings asian / black / white are accepted
too; anything else fails loudly). Files are read with allow_pickle=False.
Input: one channel. The map is clipped to RNFLT_RANGE_UM = [0, 350] micrometres and scaled linearly
to 0..255 (uint8), then resized to `image_size` (bilinear). Target `glaucoma`. Attributes: `race`
(Asian / Black / White), `gender` (Female / Male). Split: the official folders (default) or
split=random (80/10/10 stratified by race, gender and label, seeded).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import GREY_MEAN, GREY_STD, ImageDataset, Samples

# Fixed scaling of thickness to uint8: RNFLT beyond 350 um is physiologically implausible and
# negative values mark missing measurements, so both ends are clipped.
RNFLT_RANGE_UM = (0.0, 350.0)
SPLIT_FOLDERS = {
    "train": ("train", "Training", "training"),
    "val": ("val", "Validation", "validation"),
    "test": ("test", "Test", "testing"),
}
RACE_CODES = {0: "Asian", 1: "Black", 2: "White"}
RACE_NAMES = {"asian": "Asian", "black": "Black", "black or african american": "Black",
              "white": "White", "white or caucasian": "White"}
GENDER_NAMES = {"female": "Female", "male": "Male"}


class BadFile(ValueError):
    """A file whose content does not match the documented format (its problem, one line)."""


def _scalar(z, key: str, path: Path) -> np.ndarray:
    if key not in z.files:
        raise BadFile(f"no {key!r} array (has: {', '.join(z.files)})")
    try:
        value = z[key]
    except ValueError:  # object arrays need pickle, which we never allow
        raise DatasetError(f"harvard-gf: {key!r} in {path.name} is stored as Python objects; "
                           "expected an integer code or a string") from None
    if value.size != 1:
        raise BadFile(f"{key!r} holds {value.size} values, expected one")
    return value.reshape(())


def decode_race(value: np.ndarray, path: Path) -> str:
    """Race code (0/1/2) or name (asian/black/white) -> Asian / Black / White; anything else fails."""
    if value.dtype.kind in "iu" or (value.dtype.kind == "f" and float(value) == int(value)):
        code = int(value)
        if code in RACE_CODES:
            return RACE_CODES[code]
    elif value.dtype.kind in "US":
        text = value.item().decode() if value.dtype.kind == "S" else value.item()
        if text.strip().lower() in RACE_NAMES:
            return RACE_NAMES[text.strip().lower()]
    raise DatasetError(
        f"harvard-gf: unexpected race {value.item()!r} ({value.dtype}) in {path.name}; "
        "expected an integer code 0 (Asian), 1 (Black), 2 (White) or one of the strings asian, black, white"
    )


def decode_gender(z, path: Path) -> str:
    """`male` (1 male, 0 female) or `gender` (same coding, or the strings male / female)."""
    key = "male" if "male" in z.files else "gender"
    value = _scalar(z, key, path)
    if value.dtype.kind in "iub" or (value.dtype.kind == "f" and float(value) in (0.0, 1.0)):
        if int(value) in (0, 1):
            return "Male" if int(value) == 1 else "Female"
    elif value.dtype.kind in "US":
        text = (value.item().decode() if value.dtype.kind == "S" else value.item()).strip().lower()
        if text in GENDER_NAMES:
            return GENDER_NAMES[text]
    raise DatasetError(f"harvard-gf: unexpected {key} {value.item()!r} in {path.name}; expected 0 (female) or 1 (male)")


def decode_rnflt(path: str, size: int) -> np.ndarray:
    """The RNFLT map of one file as uint8 [1, size, size] (fixed range RNFLT_RANGE_UM -> 0..255)."""
    with np.load(path, allow_pickle=False) as z:
        if "rnflt" not in z.files:
            raise BadFile(f"no 'rnflt' array (has: {', '.join(z.files)})")
        m = np.asarray(z["rnflt"], dtype=np.float32)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise BadFile(f"rnflt has shape {m.shape}, expected a 2-D map")
    lo, hi = RNFLT_RANGE_UM
    m = (np.clip(np.nan_to_num(m, nan=lo), lo, hi) - lo) * (255.0 / (hi - lo))
    img = ImageOps.fit(Image.fromarray(m), (size, size), method=Image.Resampling.BILINEAR)
    return np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)[None]


@register_dataset("harvard-gf")
class HarvardGF(ImageDataset):
    description = "Harvard-GF OCT RNFLT maps for glaucoma detection, racially balanced (local copy, one channel)"
    citation = "Luo et al. (2024), Harvard Glaucoma Fairness, IEEE TMI; doi:10.7910/DVN/A4XMO1"
    targets = {"glaucoma": "glaucoma (1) vs non-glaucoma (0)"}
    default_target = "glaucoma"
    attributes = {"race": "Asian / Black / White", "gender": "Female / Male"}
    size_note = "3,300 patients: 2,100 train / 300 val / 900 test (official folders)"
    channels = 1
    mean, std = GREY_MEAN, GREY_STD
    split_choices = ("official", "random")

    def _split_folders(self) -> dict[str, Path]:
        for base in (self.root_path, self.root_path / "Dataset"):
            found = {}
            for split, names in SPLIT_FOLDERS.items():
                found[split] = next((base / n for n in names if (base / n).is_dir()), None)
            if all(found.values()):
                return found
        raise DatasetError(
            f"{self.name}: official split folders not found under {self.root_path} "
            "(expected train/, val/, test/ or Training/, Validation/, Test/ holding the .npz files)"
        )

    def check_layout(self) -> None:
        for split, folder in self._split_folders().items():
            if next(folder.glob("*.npz"), None) is None:
                raise DatasetError(f"{self.name}: no .npz file in {folder} (the {split} split)")

    def class_names(self) -> list[str]:
        return ["non-glaucoma", "glaucoma"]

    def decoder(self):
        size = self.image_size
        return lambda path: decode_rnflt(path, size)

    def decode_settings(self) -> dict:
        return {"decoder": "rnflt-clip-linear/1", "range_um": list(RNFLT_RANGE_UM), "size": self.image_size}

    def read_samples(self) -> Samples:
        rows, unreadable = [], []
        for split, folder in self._split_folders().items():
            for path in sorted(folder.glob("*.npz")):
                try:
                    with np.load(path, allow_pickle=False) as z:
                        glaucoma = _scalar(z, "glaucoma", path)
                        race = decode_race(_scalar(z, "race", path), path)
                        gender = decode_gender(z, path)
                except (BadFile, OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
                    if isinstance(exc, DatasetError):
                        raise
                    unreadable.append((str(path), f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
                    continue
                if glaucoma.dtype.kind not in "iufb" or float(glaucoma) not in (0.0, 1.0):
                    raise DatasetError(
                        f"{self.name}: unexpected glaucoma label {glaucoma.item()!r} in {path.name}; expected 0 or 1"
                    )
                rows.append((f"{folder.name}/{path.stem}", int(glaucoma), race, gender, split, str(path)))
        table = pd.DataFrame(rows, columns=["sample_id", "y", "race", "gender", "official_split", "path"])
        return Samples(table=table, unreadable=unreadable)
