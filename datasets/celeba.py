"""CelebA aligned face images with 40 binary attributes (Liu et al., 2015), read from the official files.

Layout under the root (the Google Drive folders Anno/, Eval/, Img/ are also accepted):
    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt      line 1: image count; line 2: the 40 attribute names; then one
                              whitespace-aligned row per image: file name and 40 values 1 / -1
    list_eval_partition.txt   "<file> <0|1|2>" (train / val / test), needed for split=official
Target: any of the 40 attributes (default Smiling). Attributes: `Male` (Male / Female), `Young`
(Young / Not-Young). Split: the official partition (default) or split=random (80/10/10 stratified
by Male, Young and label, seeded). Face protocol: 64 px, random resized crop and flip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import FACE_IMAGE_SIZE, ImageDataset, Samples
from noharm.datasets.image_files import find_first, list_files, plain

ATTRIBUTES_40 = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
PARTITIONS = {0: "train", 1: "val", 2: "test"}


@register_dataset("celeba")
class CelebA(ImageDataset):
    description = "CelebA aligned celebrity faces with 40 binary attributes (local copy)"
    citation = "Liu, Luo, Wang & Tang (2015), Deep Learning Face Attributes in the Wild, ICCV"
    targets = {a: "binary" for a in ATTRIBUTES_40}
    default_target = "Smiling"
    attributes = {"Male": "Female / Male", "Young": "Not-Young / Young"}
    size_note = "202,599 images: 162,770 train / 19,867 val / 19,962 test (official partition)"
    default_image_size = FACE_IMAGE_SIZE
    protocol_augment = "resized_crop_flip"
    split_choices = ("official", "random")

    def _files(self) -> dict[str, Path]:
        root = self.root_path
        hint = "point --data-root at the CelebA folder (holding img_align_celeba/ and the list_*.txt files)"
        out = {
            "attr": find_first(root, [ATTR_FILE, f"Anno/{ATTR_FILE}"], f"{self.name}: {ATTR_FILE}", hint),
            "images": find_first(root, ["img_align_celeba", "Img/img_align_celeba"],
                                 f"{self.name}: image folder img_align_celeba/", hint),
        }
        nested = out["images"] / "img_align_celeba"  # the Kaggle archive nests the folder once more
        if nested.is_dir():
            out["images"] = nested
        if self.split == "official":
            out["partition"] = find_first(root, [PARTITION_FILE, f"Eval/{PARTITION_FILE}"], f"{self.name}: {PARTITION_FILE}",
                                          "it holds the official partition; or pass --option split=random")
        return out

    def check_layout(self) -> None:
        self._files()

    def class_names(self) -> list[str]:
        return [f"not {self.target}", self.target]

    def read_samples(self) -> Samples:
        files = self._files()
        attrs = read_attr_file(files["attr"], self.name)
        for col in {self.target, *self.attributes}:
            if col not in attrs.columns:
                raise DatasetError(f"{self.name}: {ATTR_FILE} has no column {col!r}; is this the official file?")
        table = pd.DataFrame({
            "sample_id": attrs["image_id"].to_numpy(),
            "y": (attrs[self.target] == 1).astype(np.int64).to_numpy(),
            "Male": np.where(attrs["Male"] == 1, "Male", "Female"),
            "Young": np.where(attrs["Young"] == 1, "Young", "Not-Young"),
        })
        if self.split == "official":
            part = read_partition_file(files["partition"], self.name)
            split = table["sample_id"].map(part)
            if split.isna().any():
                raise DatasetError(
                    f"{self.name}: {int(split.isna().sum())} images of {ATTR_FILE} "
                    f"(e.g. {table['sample_id'][split.isna()].iloc[0]}) "
                    f"have no row in {PARTITION_FILE}; use the files of one release, or --option split=random"
                )
            table["official_split"] = split.to_numpy()
        listing = list_files(files["images"])
        table["path"] = [str(listing.get(n, files["images"] / n)) for n in table["sample_id"]]
        return Samples(table=table)


def read_attr_file(path: Path, dataset: str = "celeba") -> pd.DataFrame:
    """Parse list_attr_celeba.txt: count line, header line, then whitespace-aligned rows of 1 / -1."""
    with open(path, encoding="utf-8") as f:
        count_line = f.readline()
        names = f.readline().split()
    try:
        count = int(count_line.strip())
    except ValueError:
        raise DatasetError(f"{dataset}: {path.name} must start with the image count, got {count_line.strip()[:40]!r}") from None
    if not names:
        raise DatasetError(f"{dataset}: {path.name} has no attribute-name line")
    try:
        df = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names],
                         dtype={"image_id": str}, engine="c")
    except (pd.errors.ParserError, ValueError) as exc:
        raise DatasetError(f"{dataset}: cannot parse {path.name} ({str(exc).splitlines()[0]})") from None
    if len(df) != count:
        raise DatasetError(
            f"{dataset}: {path.name} announces {count} images but lists {len(df)}; the file is truncated or edited"
        )
    values = df[names]
    bad = ~values.isin([1, -1])
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DatasetError(
            f"{dataset}: unexpected value {plain(values.iat[r, c])!r} for {names[c]} of {df['image_id'].iat[r]} "
            f"in {path.name}; "
            "expected 1 or -1"
        )
    return df


def read_partition_file(path: Path, dataset: str = "celeba") -> pd.Series:
    """Parse list_eval_partition.txt into image name -> train / val / test."""
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, names=["image_id", "partition"], dtype={"image_id": str})
    except (pd.errors.ParserError, ValueError) as exc:
        raise DatasetError(f"{dataset}: cannot parse {path.name} ({str(exc).splitlines()[0]})") from None
    bad = ~df["partition"].isin(list(PARTITIONS))
    if bad.any():
        raise DatasetError(
            f"{dataset}: unexpected partition {plain(df['partition'][bad].iloc[0])!r} in {path.name}; expected 0, 1 or 2"
        )
    return pd.Series(df["partition"].map(PARTITIONS).to_numpy(), index=df["image_id"].to_numpy())
