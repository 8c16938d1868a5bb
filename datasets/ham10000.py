"""HAM10000 dermoscopy images (Tschandl et al., 2018), read from the Harvard Dataverse release.

Layout under the root:
    HAM10000_metadata.csv     lesion_id, image_id, dx, dx_type, age, sex, localization[, dataset]
    HAM10000_images_part_1/   ISIC_<id>.jpg   (and/or HAM10000_images_part_2/, or HAM10000_images/)
Target `malignant`: dx in {mel, akiec} (melanoma, actinic keratosis / intraepithelial carcinoma).
Attributes: `sex` (Female / Male; `unknown` dropped and counted), `age` (60-plus / under-60;
missing age dropped and counted). Split 80/10/10 grouped by lesion_id (no lesion in two splits),
stratified by sex, age and label, seeded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import ImageDataset, Samples
from noharm.datasets.image_files import check_values, find_first, list_files, read_table

METADATA = "HAM10000_metadata.csv"
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")
DX = {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
MALIGNANT = {"mel", "akiec"}
AGE_CUT = 60


@register_dataset("ham10000")
class HAM10000(ImageDataset):
    description = "HAM10000 dermoscopic images of pigmented skin lesions (local copy)"
    citation = "Tschandl, Rosendahl & Kittler (2018), Sci. Data 5:180161, doi:10.7910/DVN/DBW86T"
    targets = {"malignant": "dx is mel or akiec (binary)"}
    default_target = "malignant"
    attributes = {"sex": "Female / Male", "age": "60-plus / under-60"}
    size_note = "10,015 images of 7,470 lesions (minus unknown sex and missing age)"
    split_choices = ("lesion",)

    def check_layout(self) -> None:
        find_first(self.root_path, [METADATA], f"{self.name}: metadata file {METADATA}",
                   "point --data-root at the folder holding the Dataverse files")
        self._image_folders()

    def _image_folders(self):
        folders = [self.root_path / f for f in IMAGE_FOLDERS if (self.root_path / f).is_dir()]
        if not folders:
            raise DatasetError(
                f"{self.name}: no image folder under {self.root_path} (expected {IMAGE_FOLDERS[0]}/ and "
                f"{IMAGE_FOLDERS[1]}/, or {IMAGE_FOLDERS[2]}/); unzip the image archives there"
            )
        return folders

    def class_names(self) -> list[str]:
        return ["benign", "malignant"]

    def read_samples(self) -> Samples:
        path = self.root_path / METADATA
        meta = read_table(path, ["lesion_id", "image_id", "dx", "age", "sex"], self.name)
        meta["sex"] = meta["sex"].fillna("unknown").astype(str).str.strip().str.lower()
        check_values(meta["sex"], {"male", "female", "unknown"}, "sex", METADATA, self.name)
        check_values(meta["dx"], DX, "dx", METADATA, self.name)
        age = pd.to_numeric(meta["age"], errors="coerce")
        bad_age = meta["age"].notna() & age.isna()
        if bad_age.any():
            raise DatasetError(f"{self.name}: non-numeric age {meta['age'][bad_age].iloc[0]!r} in {METADATA}")

        dropped = {}
        keep = meta["sex"] != "unknown"
        dropped["sex unknown"] = int((~keep).sum())
        missing_age = keep & age.isna()
        dropped["age missing"] = int(missing_age.sum())
        keep &= ~missing_age
        meta, age = meta[keep], age[keep]

        files: dict[str, object] = {}
        folders = self._image_folders()
        for folder in folders:
            files.update(list_files(folder))
        names = meta["image_id"].astype(str) + ".jpg"
        # A file listed in no folder keeps a path in the first one, so the cache reports it as missing.
        paths = [str(files.get(n, folders[0] / n)) for n in names]
        table = pd.DataFrame({
            "sample_id": meta["image_id"].astype(str).to_numpy(),
            "y": meta["dx"].isin(MALIGNANT).astype(np.int64).to_numpy(),
            "sex": np.where(meta["sex"] == "male", "Male", "Female"),
            "age": np.where(age.to_numpy() >= AGE_CUT, "60-plus", "under-60"),
            "subject_id": meta["lesion_id"].astype(str).to_numpy(),
            "path": paths,
        })
        return Samples(table=table, dropped={k: v for k, v in dropped.items() if v})
