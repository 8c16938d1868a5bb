"""Bad input to the real-dataset loaders: each case is one DatasetError line that says what and where."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noharm.bench.cli import main
from noharm.datasets import DatasetError, get_dataset
from noharm.datasets.image_files import decode_image
from tests import real_layouts as R
from tests.test_real_datasets import WRITERS

SIZE = 16


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    base = tmp_path_factory.mktemp("orig")
    return {name: (base / name, write(base / name)) for name, write in WRITERS.items()}


def copy_of(originals, name, tmp_path) -> tuple[Path, pd.DataFrame]:
    src, truth = originals[name]
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst, truth


def edit_csv(path: Path, fn) -> None:
    """Rewrite a CSV (gzip'ed when the name says so) through `fn(DataFrame) -> DataFrame`."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as f:
            df.to_csv(f, index=False)
    else:
        df.to_csv(path, index=False)


def set_cell(column, value, row=0):
    def fn(df):
        df.loc[row, column] = value
        return df
    return fn


def edit_celeba_attr(root: Path, fn) -> None:
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def drop_celeba_column(lines, name="Smiling"):
    header = lines[1].split()
    j = header.index(name)
    rows = [" ".join(r.split()[:j + 1] + r.split()[j + 2:]) for r in lines[2:]]
    return [lines[0], " ".join(h for h in header if h != name)] + rows


def put_celeba_value(lines, value="0"):
    fields = lines[6].split()  # the row of 000005.jpg
    fields[3] = value
    return lines[:6] + [" ".join(fields)] + lines[7:]


def rewrite_npz(path: Path, drop: str | None = None, **replace) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    arrays.update(replace)
    np.savez(path, **arrays)


def ham_image(root: Path, part: int, index: int) -> Path:
    return sorted((root / f"HAM10000_images_part_{part}").iterdir())[index]


def fitz_image(root: Path, truth, row: int) -> Path:
    return root / "images" / f"{truth['md5hash'][row]}.jpg"


def mimic_image(root: Path, truth) -> Path:
    row = truth[truth["frontal"] & truth["race"].notna()].iloc[0]
    sid = str(row["subject_id"])
    return next((root / "files" / f"p{sid[:2]}" / f"p{sid}").rglob(f"{row['dicom_id']}.jpg"))


UTK_BROKEN_LINK = "30_1_0_20170117000000000.jpg.chip.jpg"

# (dataset, case, mutate(root, truth), expected message pattern, extra options)
CASES = [
    # HAM10000
    ("ham10000", "missing metadata", lambda r, t: (r / "HAM10000_metadata.csv").unlink(),
     r"HAM10000_metadata\.csv not found", {}),
    ("ham10000", "missing column", lambda r, t: edit_csv(r / "HAM10000_metadata.csv", lambda d: d.drop(columns="sex")),
     r"HAM10000_metadata\.csv lacks column\(s\) sex \(has: lesion_id, image_id", {}),
    ("ham10000", "missing image folders", lambda r, t: [shutil.rmtree(r / f"HAM10000_images_part_{i}") for i in (1, 2)],
     r"no image folder under .* \(expected HAM10000_images_part_1/", {}),
    ("ham10000", "missing image", lambda r, t: ham_image(r, 1, 0).unlink(),
     r"^ham10000: 1 of 50 images cannot be read: HAM10000_images_part_1/ISIC_0024300\.jpg \(missing\); "
     r"fix or remove them, or pass --option skip_bad_images=true", {}),
    ("ham10000", "corrupt image", lambda r, t: R.corrupt(ham_image(r, 2, -1)),
     r"1 of 50 images cannot be read: HAM10000_images_part_2/ISIC_\d+\.jpg \(unreadable: cannot identify image file", {}),
    ("ham10000", "truncated image", lambda r, t: R.truncate(ham_image(r, 2, 3)),
     r"HAM10000_images_part_2/ISIC_\d+\.jpg \(unreadable: .*[Tt]runcated", {}),
    ("ham10000", "unexpected value", lambda r, t: edit_csv(r / "HAM10000_metadata.csv", set_cell("sex", "other")),
     r"unexpected sex value\(s\) 'other' in 1 row\(s\) of HAM10000_metadata\.csv; expected one of: female, male, unknown", {}),
    ("ham10000", "unexpected dx", lambda r, t: edit_csv(r / "HAM10000_metadata.csv", set_cell("dx", "MEL")),
     r"unexpected dx value\(s\) 'MEL'", {}),
    # Fitzpatrick17k
    ("fitzpatrick17k", "missing metadata", lambda r, t: (r / "fitzpatrick17k.csv").unlink(),
     r"metadata file .*fitzpatrick17k\.csv not found", {}),
    ("fitzpatrick17k", "missing column",
     lambda r, t: edit_csv(r / "fitzpatrick17k.csv", lambda d: d.drop(columns="three_partition_label")),
     r"fitzpatrick17k\.csv lacks column\(s\) three_partition_label", {}),
    ("fitzpatrick17k", "missing image", lambda r, t: fitz_image(r, t, 0).unlink(), r"images/[0-9a-f]{32}\.jpg \(missing\)", {}),
    ("fitzpatrick17k", "corrupt image", lambda r, t: R.corrupt(fitz_image(r, t, 1)), r"images/[0-9a-f]{32}\.jpg \(unreadable", {}),
    ("fitzpatrick17k", "unexpected value", lambda r, t: edit_csv(r / "fitzpatrick17k.csv", set_cell("fitzpatrick_scale", "7")),
     r"unexpected fitzpatrick_scale value 7 in 1 row\(s\) of fitzpatrick17k\.csv; expected -1 \(not rated\) or 1 to 6", {}),
    ("fitzpatrick17k", "unexpected label",
     lambda r, t: edit_csv(r / "fitzpatrick17k.csv", set_cell("three_partition_label", "cancer")),
     r"unexpected three_partition_label value\(s\) 'cancer'", {}),
    # CelebA
    ("celeba", "missing metadata", lambda r, t: (r / "list_attr_celeba.txt").unlink(), r"celeba: list_attr_celeba\.txt not found", {}),
    ("celeba", "missing partition file", lambda r, t: (r / "list_eval_partition.txt").unlink(),
     r"list_eval_partition\.txt not found .*--option split=random", {}),
    ("celeba", "missing column", lambda r, t: edit_celeba_attr(r, drop_celeba_column),
     r"list_attr_celeba\.txt has no column 'Smiling'", {}),
    ("celeba", "missing image", lambda r, t: (r / "img_align_celeba" / "000003.jpg").unlink(),
     r"img_align_celeba/000003\.jpg \(missing\)", {}),
    ("celeba", "corrupt image", lambda r, t: R.corrupt(r / "img_align_celeba" / "000007.jpg"),
     r"img_align_celeba/000007\.jpg \(unreadable", {}),
    ("celeba", "unexpected value", lambda r, t: edit_celeba_attr(r, put_celeba_value),
     r"unexpected value 0 for Attractive of 000005\.jpg in list_attr_celeba\.txt; expected 1 or -1", {}),
    ("celeba", "truncated attribute file", lambda r, t: edit_celeba_attr(r, lambda lines: lines[:-1]),
     r"list_attr_celeba\.txt announces 40 images but lists 39", {}),
    # UTKFace: the file names are the metadata
    ("utkface", "no labelled files", lambda r, t: shutil.rmtree(r / "UTKFace"),
     r"no file named <age>_<gender>_<race>_<datetime>\.jpg in", {}),
    ("utkface", "missing image", lambda r, t: os.symlink(r / "gone.jpg", r / "UTKFace" / UTK_BROKEN_LINK),
     rf"UTKFace/{UTK_BROKEN_LINK} \(missing\)", {}),
    ("utkface", "corrupt image", lambda r, t: R.corrupt(r / "UTKFace" / t["name"][5]), r"UTKFace/.*\(unreadable", {}),
    ("utkface", "unexpected value",
     lambda r, t: R.save_image(r / "UTKFace" / "30_0_7_20170117000000000.jpg.chip.jpg", np.random.default_rng(0)),
     r"unexpected race code 7 in file name UTKFace/30_0_7_20170117000000000\.jpg\.chip\.jpg", {}),
    # FairFace
    ("fairface", "missing metadata", lambda r, t: (r / "fairface_label_val.csv").unlink(),
     r"label file .*fairface_label_val\.csv not found", {}),
    ("fairface", "missing column", lambda r, t: edit_csv(r / "fairface_label_train.csv", lambda d: d.drop(columns="race")),
     r"fairface_label_train\.csv lacks column\(s\) race", {}),
    ("fairface", "missing image", lambda r, t: (r / "train" / "3.jpg").unlink(), r"train/3\.jpg \(missing\)", {}),
    ("fairface", "corrupt image", lambda r, t: R.corrupt(r / "val" / "2.jpg"), r"val/2\.jpg \(unreadable", {}),
    ("fairface", "unexpected value", lambda r, t: edit_csv(r / "fairface_label_val.csv", set_cell("gender", "Unknown", 4)),
     r"unexpected gender value\(s\) 'Unknown' in 1 row\(s\) of fairface_label_val\.csv", {}),
    ("fairface", "bad val_fraction", lambda r, t: None, r"val_fraction must be a number in \(0, 1\)", {"val_fraction": 1.5}),
    # Harvard-GF: one .npz per patient
    ("harvard-gf", "missing split folder", lambda r, t: shutil.rmtree(r / "val"),
     r"official split folders not found under .* \(expected train/, val/, test/", {}),
    ("harvard-gf", "missing key", lambda r, t: rewrite_npz(r / "train" / "data_0002.npz", drop="race"),
     r"train/data_0002\.npz \(unreadable: no 'race' array", {}),
    ("harvard-gf", "missing map", lambda r, t: rewrite_npz(r / "test" / "data_0040.npz", drop="rnflt"),
     r"test/data_0040\.npz \(unreadable: no 'rnflt' array", {}),
    ("harvard-gf", "corrupt file", lambda r, t: R.corrupt(r / "val" / "data_0026.npz"), r"val/data_0026\.npz \(unreadable", {}),
    ("harvard-gf", "unexpected value", lambda r, t: rewrite_npz(r / "train" / "data_0003.npz", race=np.array(5)),
     r"unexpected race 5 \(int64\) in data_0003\.npz; expected an integer code 0 \(Asian\), 1 \(Black\), 2 \(White\)", {}),
    ("harvard-gf", "unexpected race string", lambda r, t: rewrite_npz(r / "train" / "data_0003.npz", race=np.array("Martian")),
     r"unexpected race 'Martian'", {}),
    ("harvard-gf", "fractional race code", lambda r, t: rewrite_npz(r / "train" / "data_0003.npz", race=np.array(1.5)),
     r"unexpected race 1\.5 \(float64\)", {}),
    ("harvard-gf", "unexpected gender", lambda r, t: rewrite_npz(r / "train" / "data_0003.npz", male=np.array(3)),
     r"unexpected male 3 in data_0003\.npz", {}),
    # MIMIC-CXR + MIMIC-IV
    ("mimic-cxr", "missing metadata", lambda r, t: (r / "mimic-cxr-2.0.0-metadata.csv.gz").unlink(),
     r"mimic-cxr-2\.0\.0-metadata\.csv\.gz not found", {}),
    ("mimic-cxr", "missing MIMIC-IV table", lambda r, t: (r / "hosp" / "patients.csv.gz").unlink(),
     r"MIMIC-IV patients\.csv\.gz not found .*--option mimic_iv_root=DIR", {}),
    ("mimic-cxr", "missing column",
     lambda r, t: edit_csv(r / "mimic-cxr-2.0.0-chexpert.csv.gz", lambda d: d.drop(columns="No Finding")),
     r"mimic-cxr-2\.0\.0-chexpert\.csv\.gz lacks column\(s\) No Finding", {}),
    ("mimic-cxr", "missing image", lambda r, t: mimic_image(r, t).unlink(), r"files/p1\d/p\d+/s\d+/[0-9a-f-]+\.jpg \(missing\)", {}),
    ("mimic-cxr", "corrupt image", lambda r, t: R.corrupt(mimic_image(r, t)), r"files/p1\d/.*\.jpg \(unreadable", {}),
    ("mimic-cxr", "unexpected value", lambda r, t: edit_csv(r / "hosp" / "admissions.csv.gz", set_cell("race", "MARTIAN", 2)),
     r"unexpected race value 'MARTIAN' in admissions\.csv\.gz", {}),
    ("mimic-cxr", "unexpected gender", lambda r, t: edit_csv(r / "hosp" / "patients.csv.gz", set_cell("gender", "X")),
     r"unexpected gender value\(s\) 'X' in 1 row\(s\) of patients\.csv\.gz; expected one of: F, M", {}),
    ("mimic-cxr", "damaged gzip", lambda r, t: (r / "mimic-cxr-2.0.0-chexpert.csv.gz").write_bytes(b"\x1f\x8b\x08garbage"),
     r"cannot read '.*mimic-cxr-2\.0\.0-chexpert\.csv\.gz' as CSV \(", {}),
]


@pytest.mark.parametrize("name, case, mutate, pattern, options", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_is_one_clear_dataset_error(name, case, mutate, pattern, options, originals, tmp_path):
    root, truth = copy_of(originals, name, tmp_path)
    mutate(root, truth)
    with pytest.raises(DatasetError, match=pattern) as err:
        get_dataset(name, root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "cache"), **options).load(0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["ham10000", "celeba", "fairface", "mimic-cxr"])
def test_skip_bad_images_drops_and_counts_them(name, originals, tmp_path):
    root, truth = copy_of(originals, name, tmp_path)
    full = get_dataset(name, root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "c")).load(0)
    victims = sorted(p for p in root.rglob("*.jpg"))
    ids = full.table["sample_id"].tolist()
    # Break two images the loader keeps: one missing, one corrupt.
    used = [p for p in victims if p.name in ids or p.stem in ids or f"{p.parent.name}/{p.name}" in ids][:2]
    used[0].unlink()
    R.corrupt(used[1])
    ds = get_dataset(name, root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "c"), skip_bad_images=True)
    b = ds.load(0)
    assert len(b.table) == len(full.table) - 2
    assert b.dropped["missing image"] == 1 and b.dropped["unreadable image"] == 1
    assert sum(p.endswith(": missing") for p in ds.problems) == 1
    assert sum(": unreadable" in p for p in ds.problems) == 1
    # The remaining rows still line up with their images.
    keep = full.table["sample_id"].isin(b.table["sample_id"]).to_numpy()
    assert np.array_equal(np.asarray(b.x), np.asarray(full.x)[keep])


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"image_size": 4}, r"ham10000: image_size must be between 8 and 1024, got 4"),
        ({"image_size": "big"}, r"image_size must be an integer, got 'big'"),
        ({"skip_bad_images": "maybe"}, r"skip_bad_images must be true or false, got 'maybe'"),
        ({"split": "random"}, r"ham10000: unknown split 'random'; choose one of: lesion"),
        ({"workers": 0}, r"workers must be between 1 and 256"),
        ({"colour": "red"}, r"unknown option\(s\) colour for dataset 'ham10000'"),
        ({"target": "benign"}, r"unknown target 'benign' for dataset 'ham10000'; choose one of: malignant"),
    ],
)
def test_bad_options_fail_before_any_work(options, pattern, tmp_path):
    with pytest.raises(DatasetError, match=pattern):
        get_dataset("ham10000", root=str(tmp_path), **options)


def test_missing_or_absent_root(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset 'celeba' needs --data-root"):
        get_dataset("celeba")
    with pytest.raises(DatasetError, match=r"celeba: data root .*nowhere does not exist"):
        get_dataset("celeba", root=str(tmp_path / "nowhere")).validate_files()
    with pytest.raises(DatasetError, match=r"mimic-cxr: subset must be at least 1, got 0"):
        get_dataset("mimic-cxr", root=str(tmp_path), subset=0)


def test_trial_on_a_broken_dataset_fails_before_training(originals, tmp_path, capsys):
    root, _ = copy_of(originals, "fairface", tmp_path)
    R.corrupt(root / "train" / "5.jpg")
    code = main(["trial", "--dataset", "fairface", "--attribute", "race", "--method", "erm", "--quiet",
                 "--data-root", str(root), "--option", "image_size=16", "--option", f"cache_dir={tmp_path / 'c'}",
                 "--set", "epochs=1", "--set", "backbone=cnn"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "train/5.jpg (unreadable" in err and "skip_bad_images=true" in err


def test_decoded_pixels_match_the_source_image(originals):
    root, _ = originals["celeba"]
    img = decode_image(root / "img_align_celeba" / "000001.jpg", 12)
    assert img.shape == (3, 12, 12) and img.dtype == np.uint8 and 20 < img.mean() < 240
    grey = decode_image(root / "img_align_celeba" / "000001.jpg", 12, channels=1)
    assert grey.shape == (1, 12, 12)
