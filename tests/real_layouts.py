"""Fixture generators: tiny copies of the real datasets in their exact official on-disk layouts.

Each `write_<dataset>(root, ...)` writes real image files (JPEG, some PNG) and the
metadata in the publisher's format, quirks included, and returns the metadata it
wrote as a DataFrame (the ground truth tests compare the loaders against).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def save_image(path: Path, rng: np.random.Generator, size=(24, 20), mode: str = "RGB", fmt: str = "JPEG") -> None:
    """A small real image file: a smooth random colour field with noise (so decoding does real work)."""
    w, h = size
    c = 3 if mode == "RGB" else 1
    base = rng.integers(30, 220, size=(1, 1, c))
    ramp = np.linspace(-25, 25, w)[None, :, None]
    noise = rng.normal(0, 12, size=(h, w, c))
    arr = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)  # mode from the array: L or RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def corrupt(path: Path) -> None:
    """Overwrite a file with bytes no image library can identify."""
    path.write_bytes(b"this is not an image\x00\x01\x02" * 8)


def truncate(path: Path) -> None:
    """Cut a file in half, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- HAM10000
def write_ham10000(root: Path, n_lesions: int = 40, seed: int = 0) -> pd.DataFrame:
    """HAM10000_metadata.csv (with `unknown` sex and missing ages) and images over part_1 / part_2.

    Lesions fall in four (sex, age, label) strata of ten, so a seeded 80/10/10 split fills every split.
    """
    rng = np.random.default_rng(seed)
    benign = ["nv", "bkl", "bcc", "df", "vasc"]
    rows = []
    img = 24300
    for lesion in range(n_lesions):
        k = lesion % 4  # 0: female 60+ malignant; 1: male 60+; 2: female <60; 3: male <60
        for _ in range(1 + (lesion % 3 == 0)):  # one or two images per lesion
            rows.append({
                "lesion_id": f"HAM_{lesion:07d}",
                "image_id": f"ISIC_{img:07d}",
                "dx": ("mel" if lesion % 8 == 0 else "akiec") if k == 0 else benign[lesion % 5],
                "dx_type": "histo" if lesion % 3 else "follow_up",
                "age": float(65 + lesion % 20 if k < 2 else 30 + lesion % 25),
                "sex": "male" if k % 2 else "female",
                "localization": "back",
                "dataset": "vidir_modern",
            })
            img += 1
    df = pd.DataFrame(rows)
    df.loc[[3, 10], "sex"] = "unknown"
    df.loc[[5, 17], "age"] = np.nan
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "HAM10000_metadata.csv", index=False)
    for i, image_id in enumerate(df["image_id"]):
        part = "HAM10000_images_part_1" if i < len(df) // 2 else "HAM10000_images_part_2"
        save_image(root / part / f"{image_id}.jpg", rng, size=(32, 24))
    return df


# ---------------------------------------------------------------- Fitzpatrick17k
def write_fitzpatrick17k(root: Path, seed: int = 0) -> pd.DataFrame:
    """fitzpatrick17k.csv (scale -1 rows included) and images/<md5hash>.jpg (a few stored as PNG).

    40 rows in four (skin type, label) strata of ten, six covering the other types, three unrated.
    """
    rng = np.random.default_rng(seed)
    scales = [2 if i % 2 == 0 else 5 for i in range(40)] + [1, 3, 4, 6, 1, 6] + [-1, -1, -1]
    rows = []
    for i, scale in enumerate(scales):
        malignant = (i // 2) % 2 == 0 if i < 40 else i % 2 == 0
        rows.append({
            "md5hash": hashlib.md5(f"fitz{seed}-{i}".encode()).hexdigest(),
            "fitzpatrick_scale": scale,
            "fitzpatrick_centaur": abs(scale),
            "label": "melanoma" if malignant else "psoriasis",
            "nine_partition_label": "malignant melanoma" if malignant else "inflammatory",
            "three_partition_label": "malignant" if malignant else ("benign" if i % 3 else "non-neoplastic"),
            "qc": "" if i % 5 else "1 Diagnostic",
            "url": f"https://example.org/{i}.jpg",
            "url_alphanum": f"httpexampleorg{i}jpg",
        })
    df = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "fitzpatrick17k.csv", index=False)
    for i, h in enumerate(df["md5hash"]):
        save_image(root / "images" / f"{h}.jpg", rng, size=(28, 22), fmt="PNG" if i % 7 == 0 else "JPEG")
    return df


# ---------------------------------------------------------------- CelebA
def write_celeba(root: Path, n: int = 40, seed: int = 0, drive_layout: bool = False) -> pd.DataFrame:
    """img_align_celeba/, the whitespace-aligned list_attr_celeba.txt and list_eval_partition.txt.

    `drive_layout` puts them in Anno/, Eval/ and Img/ as the Google Drive folder does.
    """
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    values = np.where(rng.random((n, 40)) < 0.5, 1, -1)
    values[:, CELEBA_ATTRIBUTES.index("Male")] = np.where(np.arange(n) % 2 == 0, 1, -1)
    values[:, CELEBA_ATTRIBUTES.index("Young")] = np.where(np.arange(n) % 4 < 3, 1, -1)
    values[:, CELEBA_ATTRIBUTES.index("Smiling")] = np.where(np.arange(n) % 3 == 0, 1, -1)
    partition = np.where(np.arange(n) < int(0.7 * n), 0, np.where(np.arange(n) < int(0.85 * n), 1, 2))
    anno, evalf, img = (root / "Anno", root / "Eval", root / "Img") if drive_layout else (root, root, root)
    for d in (anno, evalf):
        d.mkdir(parents=True, exist_ok=True)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [f"{name} " + " ".join(f"{v:>2d}" for v in row) for name, row in zip(names, values)]
    (anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (evalf / "list_eval_partition.txt").write_text("".join(f"{a} {p}\n" for a, p in zip(names, partition)))
    for name in names:
        save_image(img / "img_align_celeba" / name, rng, size=(22, 27))
    df = pd.DataFrame(values, columns=CELEBA_ATTRIBUTES)
    df.insert(0, "image_id", names)
    df["partition"] = partition
    return df


# ---------------------------------------------------------------- UTKFace
UTK_MALFORMED = ("39_1_20170116174525125.jpg.chip.jpg", "53__0_20170116184028385.jpg.chip.jpg", "notes_3.jpg")


def write_utkface(root: Path, seed: int = 0) -> pd.DataFrame:
    """UTKFace/<age>_<gender>_<race>_<datetime>.jpg.chip.jpg (some plain .jpg) plus malformed names.

    40 faces in four (race, gender, age) strata of ten, eight more covering every race and age bin.
    """
    rng = np.random.default_rng(seed)
    folder = root / "UTKFace"
    people = [(26 + i % 10 if i % 4 < 2 else 41 + i % 15, i % 2, 0 if i % 4 < 2 else 2) for i in range(40)]
    people += [(5, 0, 1), (15, 1, 3), (62, 0, 4), (75, 1, 1), (33, 1, 3), (58, 0, 4), (88, 1, 0), (1, 0, 2)]
    rows = []
    for i, (age, gender, race) in enumerate(people):
        stamp = f"2017011{i % 10}1{i:02d}0000{i % 7}{i % 3}"
        name = f"{age}_{gender}_{race}_{stamp}.jpg" + (".chip.jpg" if i % 4 else "")
        save_image(folder / name, rng, size=(20, 20))
        rows.append({"name": name, "age": age, "gender": gender, "race": race})
    for name in UTK_MALFORMED:
        save_image(folder / name, rng, size=(20, 20))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- FairFace
FAIRFACE_RACES = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
FAIRFACE_AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]


def write_fairface(root: Path, seed: int = 0) -> pd.DataFrame:
    """fairface_label_train.csv / fairface_label_val.csv and the train/ and val/ image folders.

    The train set has four (race, age, gender) strata of ten (so 10% validation is drawn from each)
    plus seven faces covering every race; the val set covers every race and age bracket.
    """
    rng = np.random.default_rng(seed)
    train = [("White" if i % 4 < 2 else "East Asian", "20-29" if i % 4 < 2 else "30-39", i % 2) for i in range(40)]
    train += [(r, FAIRFACE_AGES[(3 * j) % 9], j % 2) for j, r in enumerate(FAIRFACE_RACES)]
    val = [(FAIRFACE_RACES[i % 7], FAIRFACE_AGES[i % 9], (i // 2) % 2) for i in range(14)]
    frames = []
    for part, people in (("train", train), ("val", val)):
        df = pd.DataFrame([{
            "file": f"{part}/{i + 1}.jpg", "age": age, "gender": "Female" if g else "Male", "race": race,
            "service_test": bool(i % 3 == 0),
        } for i, (race, age, g) in enumerate(people)])
        root.mkdir(parents=True, exist_ok=True)
        df.to_csv(root / f"fairface_label_{part}.csv", index=False)
        for f in df["file"]:
            save_image(root / f, rng, size=(24, 24))
        frames.append(df.assign(part=part))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- Harvard-GF
def write_harvard_gf(root: Path, counts=(24, 8, 12), seed: int = 0, race_as: str = "int",
                     folders=("train", "val", "test")) -> pd.DataFrame:
    """Per-patient .npz files (rnflt map, glaucoma, male, race, ...) in the official split folders."""
    rng = np.random.default_rng(seed)
    race_names = ["asian", "black", "white"]
    rows = []
    k = 1
    for folder, n in zip(folders, counts):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            race, male, glaucoma = k % 3, (k // 3) % 2, int(k % 5 < 2)
            rnflt = rng.uniform(-5, 360, size=(32, 32)).astype(np.float32)
            race_value = np.array(race) if race_as == "int" else np.array(race_names[race])
            save = np.savez_compressed if k % 2 else np.savez
            save(root / folder / f"data_{k:04d}.npz", rnflt=rnflt, glaucoma=np.array(glaucoma), race=race_value,
                 male=np.array(male), age=np.array(60.5), md=np.array(-1.2), tds=np.zeros(52),
                 ethnicity=np.array(0), language=np.array(0), maritalstatus=np.array(-1))
            rows.append({"file": f"{folder}/data_{k:04d}.npz", "folder": folder, "race": race,
                         "male": male, "glaucoma": glaucoma})
            k += 1
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- MIMIC-CXR-JPG + MIMIC-IV
CHEXPERT_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]
# subject offset -> admission race values (None: no admission at all).
MIMIC_RACES = [
    ["WHITE"], ["BLACK/AFRICAN AMERICAN"], ["WHITE - OTHER EUROPEAN", "UNKNOWN"], ["ASIAN - CHINESE"],
    ["HISPANIC/LATINO - PUERTO RICAN"], ["WHITE"], ["UNKNOWN"], ["WHITE", "BLACK/AFRICAN AMERICAN"],
    ["PATIENT DECLINED TO ANSWER"], None, ["BLACK/CAPE VERDEAN"], ["WHITE"], ["ASIAN"], ["WHITE - RUSSIAN"],
]


def _write_gz_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as f:
        df.to_csv(f, index=False)


def write_mimic_cxr(root: Path, seed: int = 0, mimic_iv: str = "hosp") -> pd.DataFrame:
    """The gzip'ed MIMIC-CXR-JPG tables, files/pXX/p<subject>/s<study>/<dicom>.jpg, MIMIC-IV patients/admissions.

    Returns one row per image with the expected attributes (`race` None when the
    patient must be dropped) and whether the view is frontal.
    """
    rng = np.random.default_rng(seed)
    meta, chex, split, patients, admissions, truth = [], [], [], [], [], []
    study = 50000000
    # 14 patients with varied race records, then 40 White patients under 60 in four
    # (sex, first label) strata of ten, so a seeded split by patient fills every split.
    bulk = [["WHITE"]] * 40
    for s, races in enumerate(MIMIC_RACES + bulk):
        is_bulk = s >= len(MIMIC_RACES)
        subject = 10000032 + s * 1117 + (s % 3) * 1_000_000  # p10, p11, p12 folders
        gender = "M" if s % 2 else "F"
        anchor_age, anchor_year = (30 + s % 20 if is_bulk else 40 + (s * 9) % 45), 2150 + s
        if s == 5:  # 58 at the first study, 61 at the second three years later
            anchor_age = 58
        patients.append({"subject_id": subject, "gender": gender, "anchor_age": anchor_age,
                         "anchor_year": anchor_year, "anchor_year_group": "2014 - 2016", "dod": ""})
        for r in races or []:
            admissions.append({"subject_id": subject, "hadm_id": 20000000 + len(admissions),
                               "admittime": "2180-05-06 22:23:00", "insurance": "Other", "race": r})
        part = ["train", "validate", "test"][s % 3]
        for st in range(1 + s % 2):
            study += 1
            year = anchor_year + st * 3
            no_finding = [1.0, np.nan, 0.0, -1.0][(s + st) % 4]
            if is_bulk and st == 0:
                no_finding = 1.0 if (s // 2) % 2 else np.nan
            chex.append({"subject_id": subject, "study_id": study,
                         **{lab: (no_finding if lab == "No Finding" else np.nan) for lab in CHEXPERT_LABELS}})
            for view in (["PA"] if is_bulk else ["PA", "LATERAL"] if st == 0 else ["AP"]):
                dicom = hashlib.sha1(f"{subject}-{study}-{view}".encode()).hexdigest()
                dicom = "-".join(dicom[i:i + 8] for i in range(0, 40, 8))
                meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                             "Rows": 3056, "Columns": 2544, "StudyDate": year * 10000 + 506, "StudyTime": 213014.531,
                             "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                             "ViewCodeSequence_CodeMeaning": "postero-anterior",
                             "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
                split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": part})
                path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
                save_image(path, rng, size=(30, 24), mode="L")
                groups = {_race_group(r) for r in races or []} - {None}
                truth.append({"dicom_id": dicom, "subject_id": subject, "frontal": view in ("PA", "AP"),
                              "y": int(no_finding == 1.0), "sex": "Male" if gender == "M" else "Female",
                              "race": groups.pop() if len(groups) == 1 else None,
                              "age": anchor_age + year - anchor_year, "split": part})
    prefix = root / "mimic-cxr-2.0.0-"
    _write_gz_csv(pd.DataFrame(meta), Path(f"{prefix}metadata.csv.gz"))
    _write_gz_csv(pd.DataFrame(chex), Path(f"{prefix}chexpert.csv.gz"))
    _write_gz_csv(pd.DataFrame(split), Path(f"{prefix}split.csv.gz"))
    iv = root / mimic_iv if mimic_iv else root
    _write_gz_csv(pd.DataFrame(patients), iv / "patients.csv.gz")
    _write_gz_csv(pd.DataFrame(admissions), iv / "admissions.csv.gz")
    return pd.DataFrame(truth)


def _race_group(value: str) -> str | None:
    if value in ("UNKNOWN", "PATIENT DECLINED TO ANSWER", "OTHER"):
        return None
    return "White" if value.startswith("WHITE") else "non-White"
