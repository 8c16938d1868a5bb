"""Fitzpatrick17k clinical skin images with Fitzpatrick skin types (Groh et al., 2021).

Layout under the root:
    fitzpatrick17k.csv   md5hash, fitzpatrick_scale, fitzpatrick_centaur, label, nine_partition_label,
                         three_partition_label, qc, url, url_alphanum
    images/<md5hash>.jpg (or the images directly in the root; option `image_dir` names another folder)
Target `malignant`: three_partition_label == malignant. Attributes: `skin_type` (I-III / IV-VI) and
`skin_type6` (I ... VI); fitzpatrick_scale -1 (not rated) dropped and counted. Split 80/10/10
stratified by skin type and label, seeded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import ImageDataset, Samples
from noharm.datasets.image_files import check_values, list_files, plain, read_table

METADATA = "fitzpatrick17k.csv"
PARTITIONS = {"benign", "malignant", "non-neoplastic"}
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}


@register_dataset("fitzpatrick17k")
class Fitzpatrick17k(ImageDataset):
    description = "Fitzpatrick17k clinical images of skin conditions with Fitzpatrick skin types (local copy)"
    citation = "Groh et al. (2021), CVPR Workshops, arXiv:2104.09957"
    targets = {"malignant": "three_partition_label is malignant (binary)"}
    default_target = "malignant"
    attributes = {"skin_type": "I-III / IV-VI", "skin_type6": "Fitzpatrick type I, II, III, IV, V or VI"}
    size_note = "16,577 images (minus 565 with unrated skin type and any that failed to download)"

    def __init__(self, root=None, target=None, image_dir: str | None = None, **options):
        self._image_dir = image_dir
        super().__init__(root=root, target=target, **options)

    def check_layout(self) -> None:
        if not (self.root_path / METADATA).is_file():
            raise DatasetError(f"{self.name}: metadata file {self.root_path / METADATA} not found; "
                               "point --data-root at the folder holding fitzpatrick17k.csv")
        self._images()

    def _images(self):
        if self._image_dir:
            folder = self.root_path / self._image_dir
            if not folder.is_dir():
                raise DatasetError(f"{self.name}: image folder {folder} not found (option image_dir)")
            return folder
        folder = self.root_path / "images"
        return folder if folder.is_dir() else self.root_path

    def class_names(self) -> list[str]:
        return ["not malignant", "malignant"]

    def read_samples(self) -> Samples:
        meta = read_table(self.root_path / METADATA, ["md5hash", "fitzpatrick_scale", "three_partition_label"], self.name)
        scale = pd.to_numeric(meta["fitzpatrick_scale"], errors="coerce")
        bad = ~scale.isin([-1, *ROMAN])
        if bad.any():
            raise DatasetError(
                f"{self.name}: unexpected fitzpatrick_scale value {plain(meta['fitzpatrick_scale'][bad].iloc[0])!r} in "
                f"{int(bad.sum())} row(s) of {METADATA}; expected -1 (not rated) or 1 to 6"
            )
        check_values(meta["three_partition_label"], PARTITIONS, "three_partition_label", METADATA, self.name)

        dropped = {"skin type not rated (-1)": int((scale == -1).sum())}
        keep = np.array(scale != -1, dtype=bool)
        dup = np.array(meta["md5hash"].duplicated(), dtype=bool) & keep
        dropped["duplicate md5hash"] = int(dup.sum())
        keep &= ~dup
        meta, scale = meta[keep], scale[keep].astype(int)

        folder = self._images()
        files = list_files(folder)
        names = meta["md5hash"].astype(str) + ".jpg"
        paths = [str(files.get(n, folder / n)) for n in names]
        table = pd.DataFrame({
            "sample_id": meta["md5hash"].astype(str).to_numpy(),
            "y": (meta["three_partition_label"] == "malignant").astype(np.int64).to_numpy(),
            "skin_type": np.where(scale.to_numpy() <= 3, "I-III", "IV-VI"),
            "skin_type6": scale.map(ROMAN).to_numpy(),
            "path": paths,
        })
        return Samples(table=table, dropped={k: v for k, v in dropped.items() if v})
