"""The real-dataset loaders read tiny copies of the official layouts with the right counts, labels, groups, splits."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from noharm.datasets import DATASETS, DatasetError, Grouping, get_dataset
from noharm.datasets.harvard_gf import RNFLT_RANGE_UM
from noharm.datasets.image_files import decode_image
from tests import real_layouts as R

SIZE = 16
WRITERS = {
    "ham10000": R.write_ham10000,
    "fitzpatrick17k": R.write_fitzpatrick17k,
    "celeba": R.write_celeba,
    "utkface": R.write_utkface,
    "fairface": R.write_fairface,
    "harvard-gf": R.write_harvard_gf,
    "mimic-cxr": R.write_mimic_cxr,
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Every fixture dataset written once for this module: name -> (root, ground truth)."""
    base = tmp_path_factory.mktemp("real")
    return {name: (base / name, write(base / name)) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def load(name, roots, cache, seed=0, **options):
    ds = get_dataset(name, root=str(roots[name][0]), image_size=SIZE, cache_dir=str(cache), **options)
    return ds, ds.load(seed)


def by_id(bundle):
    return bundle.table.set_index("sample_id")


def test_all_loaders_are_registered_with_the_protocol_defaults():
    for name in WRITERS:
        cls = DATASETS.get(name)
        assert cls.needs_root and cls.kind == "image" and cls.default_target in cls.targets
    medical = ("ham10000", "fitzpatrick17k", "mimic-cxr", "harvard-gf")
    faces = ("celeba", "utkface", "fairface")
    for name in medical:
        assert DATASETS.get(name)(root="/nowhere").image_size == 224
        assert DATASETS.get(name).protocol_augment == "crop_flip"
    for name in faces:
        assert DATASETS.get(name)(root="/nowhere").image_size == 64
        assert DATASETS.get(name).protocol_augment == "resized_crop_flip"


def test_ham10000_counts_labels_groups_and_lesion_split(roots, cache):
    root, meta = roots["ham10000"]
    ds, b = load("ham10000", roots, cache)
    kept = meta[(meta["sex"] != "unknown") & meta["age"].notna()].set_index("image_id")
    assert b.dropped == {"sex unknown": 2, "age missing": 2}
    assert len(b.table) == len(kept) == 50 and b.x.shape == (50, 3, SIZE, SIZE) and b.x.dtype == np.uint8
    assert isinstance(b.x, np.memmap)  # read through the cache, not copied
    t = by_id(b)
    assert (t["y"] == kept["dx"].isin(["mel", "akiec"]).astype(int).reindex(t.index)).all()
    assert (t["sex"] == kept["sex"].str.capitalize().reindex(t.index)).all()
    assert (t["age"] == np.where(kept["age"].reindex(t.index) >= 60, "60-plus", "under-60")).all()
    assert b.augment == "crop_flip" and b.class_names == ["benign", "malignant"]
    # No lesion in two splits; every split used.
    assert (b.table.groupby("subject_id")["split"].nunique() == 1).all()
    assert set(b.table["split"]) == {"train", "val", "test"}
    # Row i of x is the image of row i of the table (the order survives the cache).
    i = 17
    image_id = b.table["sample_id"][i]
    part = next(p for p in ("HAM10000_images_part_1", "HAM10000_images_part_2") if (root / p / f"{image_id}.jpg").exists())
    assert np.array_equal(b.x[i], decode_image(root / part / f"{image_id}.jpg", SIZE))


def test_ham10000_single_image_folder_layout(roots, tmp_path):
    src, _ = roots["ham10000"]
    root = tmp_path / "ham"
    (root / "HAM10000_images").mkdir(parents=True)
    shutil.copy(src / "HAM10000_metadata.csv", root)
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        for f in (src / part).iterdir():
            shutil.copy(f, root / "HAM10000_images")
    b = get_dataset("ham10000", root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "c")).load(0)
    assert len(b.table) == 50


def test_fitzpatrick17k_skin_types(roots, cache):
    _, meta = roots["fitzpatrick17k"]
    _, b = load("fitzpatrick17k", roots, cache)
    rated = meta[meta["fitzpatrick_scale"] != -1].set_index("md5hash")
    assert b.dropped == {"skin type not rated (-1)": 3} and len(b.table) == len(rated) == 46
    t = by_id(b)
    scale = rated["fitzpatrick_scale"].reindex(t.index)
    assert (t["skin_type"] == np.where(scale <= 3, "I-III", "IV-VI")).all()
    assert sorted(t["skin_type6"].unique()) == ["I", "II", "III", "IV", "V", "VI"]
    assert (t["y"] == (rated["three_partition_label"].reindex(t.index) == "malignant")).all()
    assert set(b.table["split"]) == {"train", "val", "test"}


def test_celeba_official_partition_targets_and_attributes(roots, cache):
    _, meta = roots["celeba"]
    _, b = load("celeba", roots, cache)
    truth = meta.set_index("image_id")
    t = by_id(b)
    assert len(t) == 40 and b.augment == "resized_crop_flip"
    assert (t["split"] == truth["partition"].map({0: "train", 1: "val", 2: "test"}).reindex(t.index)).all()
    assert (t["y"] == (truth["Smiling"] == 1).reindex(t.index)).all()
    assert (t["Male"] == np.where(truth["Male"].reindex(t.index) == 1, "Male", "Female")).all()
    assert (t["Young"] == np.where(truth["Young"].reindex(t.index) == 1, "Young", "Not-Young")).all()
    _, hair = load("celeba", roots, cache, target="Straight_Hair")
    assert (by_id(hair)["y"] == (truth["Straight_Hair"] == 1).reindex(t.index)).all()
    assert hair.class_names == ["not Straight_Hair", "Straight_Hair"]
    # Same images, another target: the cache is shared.
    assert np.array_equal(hair.x, b.x)


def test_celeba_google_drive_layout_and_random_split(tmp_path):
    meta = R.write_celeba(tmp_path / "celeba", drive_layout=True)
    ds = get_dataset("celeba", root=str(tmp_path / "celeba"), image_size=SIZE, cache_dir=str(tmp_path / "c"),
                     split="random")
    b = ds.load(0)
    assert len(b.table) == len(meta)
    counts = b.table["split"].value_counts()
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    # Stratified: every (Male, Young, label) stratum of 5 puts 4 in train.
    assert counts["train"] == 32


def test_utkface_names_labels_and_malformed_files(roots, cache):
    _, people = roots["utkface"]
    ds, b = load("utkface", roots, cache)
    truth = people.set_index("name")
    t = by_id(b)
    assert len(t) == 48 and b.dropped == {"malformed file name": 3}
    assert sorted(p.split(":")[0] for p in ds.problems) == sorted(f"UTKFace/{n}" for n in R.UTK_MALFORMED)
    assert t.index.str.endswith(".chip.jpg").sum() == 36  # both name variants are read
    assert (t["y"] == truth["gender"].reindex(t.index)).all()
    assert (t["gender"] == truth["gender"].map({0: "Male", 1: "Female"}).reindex(t.index)).all()
    race = truth["race"].reindex(t.index)
    assert (t["race5"] == race.map({0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"})).all()
    assert (t["race"] == np.where(race == 0, "White", "non-White")).all()
    age = truth["age"].reindex(t.index)
    expected_age = pd.cut(age, [-1, 19, 39, 59, 200], labels=["0-19", "20-39", "40-59", "60-plus"]).astype(str)
    assert (t["age"] == expected_age).all() and t["age"].nunique() == 4
    _, by_race = load("utkface", roots, cache, target="race")
    assert (by_id(by_race)["y"] == (race != 0).astype(int)).all()


def test_fairface_official_split_and_groups(roots, cache):
    _, meta = roots["fairface"]
    _, b = load("fairface", roots, cache)
    truth = meta.set_index("file")
    t = by_id(b)
    assert len(t) == 61
    assert set(t.index[t["split"] == "test"]) == set(meta["file"][meta["part"] == "val"])
    # 10% of each (race, age, gender) stratum of the official train set becomes validation.
    assert (t["split"] == "val").sum() == 4
    assert (t["y"] == (truth["gender"] == "Female").reindex(t.index)).all()
    assert (t["race7"] == truth["race"].reindex(t.index)).all() and t["race7"].nunique() == 7
    assert (t["race"] == np.where(t["race7"] == "White", "White", "non-White")).all()
    assert set(t["age"]) == {"0-19", "20-39", "40-59", "60-plus"}
    assert t.loc["train/1.jpg", "age"] == "20-39"


def test_harvard_gf_official_folders_one_channel_and_race_codes(roots, cache):
    _, meta = roots["harvard-gf"]
    _, b = load("harvard-gf", roots, cache)
    truth = meta.assign(sample_id=meta["file"].str.removesuffix(".npz")).set_index("sample_id")
    t = by_id(b)
    assert b.x.shape == (44, 1, SIZE, SIZE) and len(b.mean) == 1
    assert (t["split"] == truth["folder"].reindex(t.index)).all()
    assert (t["race"] == truth["race"].map({0: "Asian", 1: "Black", 2: "White"}).reindex(t.index)).all()
    assert (t["gender"] == truth["male"].map({0: "Female", 1: "Male"}).reindex(t.index)).all()
    assert (t["y"] == truth["glaucoma"].reindex(t.index)).all()


def test_harvard_gf_string_races_other_folder_names_and_fixed_scaling(tmp_path):
    root = tmp_path / "gf"
    R.write_harvard_gf(root, counts=(6, 3, 3), race_as="str", folders=("Training", "Validation", "Test"))
    # A map at 20% of the documented range, plus out-of-range values that must clip.
    lo, hi = RNFLT_RANGE_UM
    rnflt = np.full((32, 32), lo + 0.2 * (hi - lo), dtype=np.float32)
    rnflt[:, :16] = hi + 100
    rnflt[:16, :] = -7
    np.savez(root / "Training" / "data_0001.npz", rnflt=rnflt, glaucoma=np.array(1), race=np.array("Black"),
             male=np.array(0))
    b = get_dataset("harvard-gf", root=str(root), image_size=8, cache_dir=str(tmp_path / "c")).load(0)
    t = by_id(b)
    assert set(t["race"]) == {"Asian", "Black", "White"} and (t["split"] == "val").sum() == 3
    i = int(np.flatnonzero(b.table["sample_id"] == "Training/data_0001")[0])
    img = b.x[i, 0]
    # Away from the edges between regions (which bilinear resizing blends):
    assert img[:3, :].max() == 0  # negative thickness clipped to the bottom of the range
    assert (img[5:, :3] == 255).all()  # beyond 350 um clipped to the top
    assert (img[5:, 5:] == 51).all()  # 20% of the range -> round(0.2 * 255)


def test_mimic_cxr_frontal_views_demographics_and_patient_split(roots, cache):
    _, truth = roots["mimic-cxr"]
    ds, b = load("mimic-cxr", roots, cache)
    frontal = truth[truth["frontal"]]
    expected = frontal[frontal["race"].notna()].set_index("dicom_id")
    t = by_id(b)
    assert b.x.shape == (len(expected), 1, SIZE, SIZE) == (75, 1, SIZE, SIZE)
    assert set(t.index) == set(expected.index)
    assert b.dropped == {
        "not a frontal view": int((~truth["frontal"]).sum()),
        "race missing (no MIMIC-IV admission)": 2,
        "race unknown, other or declined": 2,
        "race differs across admissions": 2,
    }
    e = expected.reindex(t.index)
    assert (t["y"] == e["y"]).all() and (t["sex"] == e["sex"]).all() and (t["race"] == e["race"]).all()
    assert (t["age"] == np.where(e["age"] >= 60, "60-plus", "under-60")).all()
    # Age at the study, not at the anchor year: one patient crosses 60 between studies.
    assert (b.table.groupby("subject_id")["age"].nunique() == 2).any()
    assert (b.table.groupby("subject_id")["split"].nunique() == 1).all()
    assert set(b.table["split"]) == {"train", "val", "test"}


def test_mimic_cxr_official_split_subset_and_mimic_iv_elsewhere(tmp_path):
    root = tmp_path / "cxr"
    truth = R.write_mimic_cxr(root, mimic_iv="")  # MIMIC-IV tables straight in the root
    iv = tmp_path / "mimiciv" / "2.2" / "hosp"
    iv.mkdir(parents=True)
    for f in ("patients.csv.gz", "admissions.csv.gz"):
        shutil.move(root / f, iv / f)
    with pytest.raises(DatasetError, match="mimic_iv_root"):
        get_dataset("mimic-cxr", root=str(root)).validate_files()
    common = dict(root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "c"), mimic_iv_root=str(iv.parent))
    b = get_dataset("mimic-cxr", split="official", **common).load(3)
    t = by_id(b)
    official = truth.set_index("dicom_id")["split"].map({"train": "train", "validate": "val", "test": "test"})
    assert (t["split"] == official.reindex(t.index)).all()
    sub0 = get_dataset("mimic-cxr", subset=20, **common)
    a, c = sub0.load(0), sub0.load(1)
    assert len(a.table) == 20 and set(a.table["sample_id"]) == set(c.table["sample_id"])
    assert a.dropped["outside the seeded subset of 20"] == 55
    other = get_dataset("mimic-cxr", subset=20, subset_seed=1, **common).load(0)
    assert set(other.table["sample_id"]) != set(a.table["sample_id"])


@pytest.mark.parametrize("name", ["ham10000", "fitzpatrick17k", "utkface", "fairface", "mimic-cxr"])
def test_splits_are_deterministic_per_seed(name, roots, cache):
    _, a = load(name, roots, cache, seed=0)
    _, again = load(name, roots, cache, seed=0)
    _, other = load(name, roots, cache, seed=1)
    assert a.table.equals(again.table) and np.array_equal(a.x, again.x)
    assert (a.table["split"] != other.table["split"]).any()
    assert a.table["sample_id"].equals(other.table["sample_id"])  # only the split changes with the seed


@pytest.mark.parametrize("name", list(WRITERS))
def test_groupings_and_attribute_values_are_metric_safe(name, roots, cache):
    _, b = load(name, roots, cache)
    for attr in b.attributes:
        values = b.table[attr]
        assert values.map(type).eq(str).all() and not values.str.contains("[=+]").any()
        g = Grouping.from_table(b.table, attr, b.attributes)
        assert g.n_groups >= 2
    both = "+".join(b.attributes[:2])
    assert Grouping.from_table(b.table, both, b.attributes).n_groups >= 3
