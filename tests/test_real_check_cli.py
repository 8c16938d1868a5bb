"""`noharm datasets check` on fixture layouts, and one trial end to end on a real-layout dataset."""

from __future__ import annotations

import math

import pytest

from noharm.bench.cli import main
from noharm.bench.trial import TrialConfig, run_trial
from noharm.datasets.check import check_dataset
from tests import real_layouts as R


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    return root, R.write_celeba(root)


def parse_counts(out: str, spec: str) -> dict[tuple[str, str], list[int]]:
    """The printed table of one attribute: (split, group) -> counts per label and total."""
    lines = out.split(f"attribute {spec}: counts per split x group x label\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows, split = {}, None
    for line in lines[2:]:  # the column header and the index-name line come first
        tokens = line.split()
        if tokens[0] in ("train", "val", "test"):
            split, tokens = tokens[0], tokens[1:]
        rows[(split, tokens[0])] = [int(t) for t in tokens[1:]]
    return rows


def test_check_prints_counts_per_split_group_and_label(celeba, tmp_path, capsys):
    root, meta = celeba
    code = main(["datasets", "check", "celeba", "--root", str(root), "--attribute", "Male",
                 "--option", "image_size=16", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("celeba: 40 samples, input 3 x 16 x 16\ndropped: nothing\n")
    assert "problems: none" in out and "note: image cache built" in out
    rows = parse_counts(out, "Male")
    split = meta["partition"].map({0: "train", 1: "val", 2: "test"})
    group = meta["Male"].map({1: "Male", -1: "Female"})
    for (s, g), (not_smiling, smiling, total) in rows.items():
        mask = (split == s) & (group == g)
        assert (smiling, total) == (int((meta["Smiling"][mask] == 1).sum()), int(mask.sum())), (s, g)
        assert not_smiling + smiling == total
    assert len(rows) == 6 and sum(r[-1] for r in rows.values()) == 40


def test_check_lists_drops_and_problems_and_exits_1(tmp_path, capsys):
    root = tmp_path / "ham"
    R.write_ham10000(root)
    (root / "HAM10000_images_part_1" / "ISIC_0024301.jpg").unlink()
    R.corrupt(root / "HAM10000_images_part_2" / "ISIC_0024340.jpg")
    code = main(["datasets", "check", "ham10000", "--data-root", str(root), "--option", "image_size=16",
                 "--cache-dir", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 1
    assert "dropped: sex unknown: 2; age missing: 2; missing image: 1; unreadable image: 1" in out
    assert "  - HAM10000_images_part_1/ISIC_0024301.jpg: missing" in out
    assert "  - HAM10000_images_part_2/ISIC_0024340.jpg: unreadable: cannot identify image file" in out
    # Male lesions of the fixture are all benign: the check says their AUC cannot be computed.
    assert "sex: group Male has only y=benign in train (its AUC is undefined)" in out
    assert "attribute sex:" in out and "attribute age:" in out


def test_check_report_counts_match_the_bundle(tmp_path):
    root = tmp_path / "utk"
    R.write_utkface(root)
    report = check_dataset("utkface", root=str(root), attribute="race+gender",
                           options={"image_size": 16, "cache_dir": str(tmp_path / "c")})
    table = report.counts["race+gender"]
    assert int(table["total"].sum()) == report.n_samples == 48
    assert report.dropped == {"malformed file name": 3}
    assert sum("malformed file name" in p for p in report.problems) == 3
    assert table.loc[("train", "White x Male"), "total"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["datasets", "check", "celeba", "--root", "/nowhere/at/all"], "celeba: data root /nowhere/at/all does not exist"),
        (["datasets", "check", "imagenet", "--root", "/tmp"], "unknown dataset 'imagenet'; choose one of:"),
        (["datasets", "check", "celeba"], "dataset 'celeba' needs --data-root"),
        (["datasets", "check", "celeba", "--root", "/tmp", "--option", "image_size"], "--option expects key=value"),
    ],
)
def test_check_bad_input_exits_2_with_one_line(argv, message, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("noharm: error: ") and message in err and err.count("\n") == 1


def test_check_attribute_must_exist(celeba, tmp_path, capsys):
    code = main(["datasets", "check", "celeba", "--root", str(celeba[0]), "--attribute", "Blond",
                 "--option", "image_size=16", "--cache-dir", str(tmp_path)])
    assert code == 2 and "unknown attribute 'Blond'; choose one of: Male, Young" in capsys.readouterr().err


def test_listing_shows_the_real_datasets(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ham10000", "fitzpatrick17k", "mimic-cxr", "harvard-gf", "celeba", "utkface", "fairface"):
        assert f"\n{name}  [image]" in out
    assert "local folder (--data-root)" in out


def test_trial_end_to_end_on_celeba_layout(celeba, tmp_path):
    cfg = TrialConfig(
        dataset="celeba", attribute="Male", method="erm", seed=0,
        hparams={"epochs": 1, "backbone": "cnn", "batch_size": 16},
        dataset_options={"root": str(celeba[0]), "image_size": 32, "cache_dir": str(tmp_path)},
    )
    res = run_trial(cfg, device="cpu")
    for key in ("test/model/acc", "test/model/acc/group:Male", "test/model/acc/group:Female", "val/model/acc/worst"):
        assert math.isfinite(res.metrics[key]), key
    preds = res.predictions
    # Validation and test rows of the official partition (70/15/15 of 40): training rows are not stored.
    assert len(preds) == 12 and set(preds["split"]) == {"val", "test"}
    assert set(preds["group"]) == {"Female", "Male"}
    assert res.notes["dropped"] == {}
