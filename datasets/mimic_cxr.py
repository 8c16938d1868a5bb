"""MIMIC-CXR-JPG chest X-rays (Johnson et al., 2019) joined with MIMIC-IV demographics.

Layout: the PhysioNet MIMIC-CXR-JPG folder as the root,
    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, StudyDate, ...
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, ..., No Finding, ...   (1.0 / 0.0 / -1.0 / empty)
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split          (needed for split=official)
    files/p10/p10000032/s50414267/<dicom_id>.jpg
and MIMIC-IV's `patients.csv.gz` (subject_id, gender, anchor_age, anchor_year) and
`admissions.csv.gz` (subject_id, race; `ethnicity` in MIMIC-IV 1.0) in the root, its `hosp/` or
`core/` folder, or under the folder named by the option `mimic_iv_root`.
Frontal views only (ViewPosition PA or AP). Target `no_finding`: No Finding == 1 (empty, 0 and -1
are 0). Attributes: `sex` (Female / Male), `race` (White / non-White; a patient whose admissions
record only unknown, other or declined race, or contradicting races, is dropped and counted),
`age` at the study (anchor_age + study year - anchor_year; 60-plus / under-60). Split: by patient,
80/10/10 stratified by the attributes and label of each patient's first image, seeded, so no
patient crosses splits (default, split=subject), or the official split file (split=official).
Option `subset`: keep a seeded random sample of that many images (`subset_seed`, default 0; the
paper used 50,000). One channel (the X-rays are grey).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import GREY_MEAN, GREY_STD, ImageDataset, Samples, int_option
from noharm.datasets.image_files import check_values, find_first, read_table

PREFIX = "mimic-cxr-2.0.0-"
TABLES = {"metadata": "metadata.csv.gz", "chexpert": "chexpert.csv.gz", "split": "split.csv.gz"}
FRONTAL = {"PA", "AP"}
AGE_CUT = 60
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}
# MIMIC-IV race (or 1.0's ethnicity) -> White / non-White / None (unknown: dropped).
RACE_UNKNOWN = {"OTHER", "UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "UNKNOWN/NOT SPECIFIED"}
RACE_WHITE_PREFIXES = ("WHITE", "PORTUGUESE")
RACE_NON_WHITE_PREFIXES = (
    "BLACK", "HISPANIC", "LATINO", "ASIAN", "AMERICAN INDIAN", "NATIVE HAWAIIAN", "MULTIPLE RACE", "SOUTH AMERICAN",
)


def race_group(value: str) -> str | None:
    """One MIMIC-IV race value -> White, non-White, or None (unknown / other / declined); else KeyError."""
    v = value.strip().upper()
    if v in RACE_UNKNOWN or not v:
        return None
    if v.startswith(RACE_WHITE_PREFIXES):
        return "White"
    if v.startswith(RACE_NON_WHITE_PREFIXES):
        return "non-White"
    raise KeyError(value)


@register_dataset("mimic-cxr")
class MimicCXR(ImageDataset):
    description = "MIMIC-CXR-JPG frontal chest X-rays with MIMIC-IV demographics (local copy, credentialed access)"
    citation = "Johnson et al. (2019), MIMIC-CXR-JPG, arXiv:1901.07042; Johnson et al. (2023), MIMIC-IV, Sci. Data"
    targets = {"no_finding": "CheXpert label No Finding == 1 (binary)"}
    default_target = "no_finding"
    attributes = {"sex": "Female / Male", "race": "White / non-White", "age": "60-plus / under-60 (at the study)"}
    size_note = "377,110 images (about 243,000 frontal); option subset=50000 samples the paper's size"
    channels = 1
    mean, std = GREY_MEAN, GREY_STD
    split_choices = ("subject", "official")

    def __init__(self, root=None, target=None, mimic_iv_root: str | None = None, subset: int | None = None,
                 subset_seed: int = 0, **options):
        super().__init__(root=root, target=target, **options)
        self.mimic_iv_root = Path(str(mimic_iv_root)).expanduser() if mimic_iv_root else self.root_path
        self.subset = None if subset is None else int_option(self.name, "subset", subset, 1)
        self.subset_seed = int_option(self.name, "subset_seed", subset_seed, 0)

    def _files(self) -> dict[str, Path]:
        hint = "point --data-root at the MIMIC-CXR-JPG folder (holding files/ and the mimic-cxr-2.0.0-*.csv.gz tables)"
        out = {k: find_first(self.root_path, [PREFIX + v, PREFIX + v[:-3]], f"{self.name}: {PREFIX + v}", hint)
               for k, v in TABLES.items() if k != "split" or self.split == "official"}
        out["files"] = find_first(self.root_path, ["files"], f"{self.name}: image folder files/", hint)
        iv_hint = "pass --option mimic_iv_root=DIR, the MIMIC-IV folder holding hosp/ (or core/ in version 1.0)"
        for table in ("patients", "admissions"):
            out[table] = find_first(
                self.mimic_iv_root, [f"{d}{table}.csv{z}" for d in ("", "hosp/", "core/") for z in (".gz", "")],
                f"{self.name}: MIMIC-IV {table}.csv.gz", iv_hint,
            )
        return out

    def check_layout(self) -> None:
        self._files()

    def class_names(self) -> list[str]:
        return ["finding", "no finding"]

    def read_samples(self) -> Samples:
        f = self._files()
        n = self.name
        meta = read_table(f["metadata"], ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"], n,
                          usecols=lambda c: c in {"dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"})
        chex = read_table(f["chexpert"], ["subject_id", "study_id", "No Finding"], n,
                          usecols=lambda c: c in {"subject_id", "study_id", "No Finding"})
        patients = read_table(f["patients"], ["subject_id", "gender", "anchor_age", "anchor_year"], n,
                              usecols=lambda c: c in {"subject_id", "gender", "anchor_age", "anchor_year"})
        adm = read_table(f["admissions"], ["subject_id"], n, usecols=lambda c: c in {"subject_id", "race", "ethnicity"})
        race_col = "race" if "race" in adm.columns else "ethnicity"
        if race_col not in adm.columns:
            raise DatasetError(f"{n}: {f['admissions'].name} lacks column race (or ethnicity in MIMIC-IV 1.0)")
        check_values(chex["No Finding"].fillna(0.0), {1.0, 0.0, -1.0}, "No Finding", f["chexpert"].name, n)
        patients["gender"] = patients["gender"].astype(str).str.strip()
        check_values(patients["gender"], {"M", "F"}, "gender", f["patients"].name, n)

        dropped: dict[str, int] = {}
        frontal = meta["ViewPosition"].isin(FRONTAL)
        dropped["not a frontal view"] = int((~frontal).sum())
        df = meta[frontal]
        chex = chex.drop_duplicates(["subject_id", "study_id"])
        df = df.merge(chex, on=["subject_id", "study_id"], how="left", indicator=True)
        dropped["study without CheXpert labels"] = int((df["_merge"] != "both").sum())
        df = df[df["_merge"] == "both"].drop(columns="_merge")
        df = df.merge(patients.drop_duplicates("subject_id"), on="subject_id", how="left", indicator=True)
        dropped["patient not in MIMIC-IV patients"] = int((df["_merge"] != "both").sum())
        df = df[df["_merge"] == "both"].drop(columns="_merge")

        race = self._race_by_subject(adm, race_col, f["admissions"].name)
        df = df.merge(race, on="subject_id", how="left")
        df["race"] = df["race"].fillna("no admission")
        for reason in ("no admission", "unknown", "conflicting"):
            label = {"no admission": "race missing (no MIMIC-IV admission)",
                     "unknown": "race unknown, other or declined",
                     "conflicting": "race differs across admissions"}[reason]
            dropped[label] = int((df["race"] == reason).sum())
        df = df[df["race"].isin(["White", "non-White"])]

        study_year = pd.to_numeric(df["StudyDate"], errors="coerce") // 10000
        age = pd.to_numeric(df["anchor_age"], errors="coerce") + (study_year - pd.to_numeric(df["anchor_year"], errors="coerce"))
        age = age.fillna(pd.to_numeric(df["anchor_age"], errors="coerce"))
        dropped["age missing"] = int(age.isna().sum())
        df, age = df[age.notna()], age[age.notna()]

        if self.split == "official":
            split = read_table(f["split"], ["dicom_id", "split"], n)
            check_values(split["split"], OFFICIAL_SPLITS, "split", f["split"].name, n)
            df = df.merge(split[["dicom_id", "split"]].drop_duplicates("dicom_id"), on="dicom_id", how="left")
            dropped["not in the official split file"] = int(df["split"].isna().sum())
            keep = df["split"].notna().to_numpy()
            df, age = df[keep], age[keep]

        if self.subset is not None and self.subset < len(df):
            rng = np.random.default_rng(self.subset_seed)
            pick = np.sort(rng.choice(len(df), size=self.subset, replace=False))
            dropped[f"outside the seeded subset of {self.subset}"] = len(df) - self.subset
            df, age = df.iloc[pick], age.iloc[pick]

        sid = df["subject_id"].astype(np.int64).astype(str)
        paths = (str(f["files"]) + "/p" + sid.str[:2] + "/p" + sid + "/s"
                 + df["study_id"].astype(np.int64).astype(str) + "/" + df["dicom_id"].astype(str) + ".jpg")
        table = pd.DataFrame({
            "sample_id": df["dicom_id"].astype(str).to_numpy(),
            "y": (df["No Finding"] == 1.0).astype(np.int64).to_numpy(),
            "sex": np.where(df["gender"] == "M", "Male", "Female"),
            "race": df["race"].to_numpy(),
            "age": np.where(age.to_numpy() >= AGE_CUT, "60-plus", "under-60"),
            "subject_id": sid.to_numpy(),
            "path": paths.to_numpy(),
        })
        if self.split == "official":
            table["official_split"] = df["split"].map(OFFICIAL_SPLITS).to_numpy()
        return Samples(table=table, dropped={k: v for k, v in dropped.items() if v})

    def _race_by_subject(self, adm: pd.DataFrame, col: str, source: str) -> pd.DataFrame:
        """One race group per patient: White / non-White, or `unknown` / `conflicting` (both dropped)."""
        values = adm[col].fillna("").astype(str)
        vocabulary = {}
        for v in pd.unique(values):
            try:
                vocabulary[v] = race_group(v)
            except KeyError:
                raise DatasetError(
                    f"{self.name}: unexpected {col} value {v!r} in {source}; expected MIMIC-IV's categories "
                    "(WHITE..., BLACK..., HISPANIC..., ASIAN..., OTHER, UNKNOWN, ...)"
                ) from None
        groups = values.map(vocabulary)
        known = pd.DataFrame({"subject_id": adm["subject_id"], "g": groups}).dropna()
        n_groups = known.groupby("subject_id")["g"].nunique()
        first = known.groupby("subject_id")["g"].first()
        race = first.where(n_groups == 1, "conflicting")
        all_subjects = pd.Index(adm["subject_id"].unique())
        race = race.reindex(all_subjects).fillna("unknown")
        return pd.DataFrame({"subject_id": race.index, "race": race.to_numpy()})
