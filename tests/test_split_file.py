"""`--option split_file=PATH`: a published split replaces a dataset's own rule, exactly; bad files fail in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from noharm.bench.cli import main
from noharm.bench.sweep.keys import trial_key
from noharm.bench.trial import TrialConfig
from noharm.datasets import DatasetError, get_dataset
from tests import real_layouts as R


def shuffled_split(ids, seed: int, fractions=(0.5, 0.25, 0.25)) -> np.ndarray:
    """A split unlike any dataset's own rule: a seeded permutation cut at `fractions`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    cuts = np.cumsum(np.round(np.array(fractions) * len(ids)).astype(int))[:2]
    out = np.empty(len(ids), dtype=object)
    out[order] = np.select([np.arange(len(ids)) < cuts[0], np.arange(len(ids)) < cuts[1]], ["train", "val"], "test")
    return out


def write_split(path, ids, split, id_column: str = "sample_id") -> str:
    pd.DataFrame({id_column: ids, "split": split}).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def adult_ids():
    return get_dataset("adult").load(0).table["sample_id"].to_numpy()


def test_adult_takes_the_files_split_and_fits_its_scaling_on_its_train_rows(adult_ids, tmp_path):
    split = shuffled_split(adult_ids, 1)
    path = write_split(tmp_path / "s.csv", adult_ids[::-1], split[::-1])  # row order does not matter
    bundle = get_dataset("adult", split_file=path).load(3)  # nor does the seed
    assert np.array_equal(bundle.table["split"].to_numpy(object), split)
    # The numeric features are standardised on the file's training rows (mean 0 there, not elsewhere).
    age, own_age = bundle.x[:, 0].astype(np.float64), get_dataset("adult").load(3).x[:, 0].astype(np.float64)
    train = split == "train"
    assert abs(age[train].mean()) < 1e-4 and abs(age[train].std() - 1) < 1e-3
    assert abs(own_age[train].mean()) > 1e-3  # the dataset's own rule fits on other rows


@pytest.mark.parametrize("mutate, pattern", [
    (lambda f: pd.concat([f, pd.DataFrame({"sample_id": ["train-999999"], "split": ["train"]})]),
     r"1 id\(s\) are not samples of adult \(e.g. 'train-999999'\)"),
    (lambda f: f.iloc[5:], r"5 of the 45222 samples of adult are missing from the file"),
    (lambda f: f.assign(split=np.where(np.arange(len(f)) == 7, "valid", f["split"])),
     r"split 'valid' on 1 row\(s\) is not one of train, val, test"),
    (lambda f: pd.concat([f, f.iloc[[0, 1]]]), r"2 id\(s\) appear more than once, e.g. 'train-0', 'train-1'"),
    (lambda f: f.rename(columns={"sample_id": "id"}), r"lacks column\(s\) sample_id; it has: id, split"),
])
def test_bad_split_files_fail_with_one_line(adult_ids, tmp_path, mutate, pattern):
    frame = pd.DataFrame({"sample_id": adult_ids, "split": shuffled_split(adult_ids, 0)})
    mutate(frame).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match=pattern) as err:
        get_dataset("adult", split_file=str(tmp_path / "bad.csv")).load(0)
    assert "\n" not in str(err.value)


def test_a_missing_split_file_fails_at_the_door(tmp_path):
    with pytest.raises(DatasetError, match="split_file .*nope.csv' not found"):
        get_dataset("adult", split_file=str(tmp_path / "nope.csv"))
    with pytest.raises(DatasetError, match="split_id_column needs split_file"):
        get_dataset("adult", split_id_column="image_id")


def test_the_cli_exits_2_on_a_bad_split_file(adult_ids, tmp_path, capsys):
    write_split(tmp_path / "s.csv", adult_ids[:-3], shuffled_split(adult_ids[:-3], 0))
    code = main(["trial", "--dataset", "adult", "--attribute", "sex", "--method", "erm", "--quiet",
                 "--option", f"split_file={tmp_path / 's.csv'}", "--set", "epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "3 of the 45222 samples of adult are missing" in err


@pytest.fixture(scope="module")
def image_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("split-file")
    R.write_utkface(base / "utkface")
    R.write_celeba(base / "celeba", n=40)
    return base


def test_utkface_takes_a_split_of_file_paths(image_roots, tmp_path):
    """Ids given as paths (`UTKFace/<file name>`, as peers ship them) match by file name."""
    options = {"root": str(image_roots / "utkface"), "image_size": 16, "cache_dir": str(tmp_path / "c")}
    own = get_dataset("utkface", **options).load(0).table
    split = shuffled_split(own["sample_id"], 2)
    path = write_split(tmp_path / "utk.csv", "UTKFace/" + own["sample_id"], split)
    table = get_dataset("utkface", split_file=path, **options).load(0).table
    assert np.array_equal(table["split"].to_numpy(object), split)
    assert not np.array_equal(split, own["split"].to_numpy(object))
    # The decoded cache does not depend on the split: the same folder serves both.
    assert len(list((tmp_path / "c" / "utkface").glob("*/meta.json"))) == 1


def test_celeba_takes_a_split_keyed_by_its_file_name_column(image_roots, tmp_path):
    options = {"root": str(image_roots / "celeba"), "image_size": 16, "cache_dir": str(tmp_path / "c")}
    own = get_dataset("celeba", **options).load(0).table
    split = shuffled_split(own["sample_id"], 3)
    path = write_split(tmp_path / "celeba.csv", own["sample_id"], split, id_column="image_id")
    table = get_dataset("celeba", split_file=path, split_id_column="image_id", **options).load(0).table
    assert np.array_equal(table["split"].to_numpy(object), split)
    with pytest.raises(DatasetError, match="lacks column"):
        get_dataset("celeba", split_file=path, **options).load(0)


def test_noharm_trial_reproduces_the_files_split_exactly(tmp_path):
    ids = get_dataset("digits-shift").load(0).table["sample_id"].to_numpy()
    split = shuffled_split(ids, 4, (0.4, 0.3, 0.3))
    path = write_split(tmp_path / "digits.csv", ids, split)
    out = tmp_path / "run"
    code = main(["trial", "--dataset", "digits-shift", "--attribute", "style", "--method", "erm", "--quiet",
                 "--option", f"split_file={path}", "--option", "image_size=16", "--set", "epochs=1",
                 "--set", "backbone=cnn", "--train-predictions", "--out", str(out)])
    assert code == 0
    preds = pd.read_parquet(out / "predictions.parquet").set_index("sample_id")
    given = pd.Series(split, index=ids)
    assert len(preds) == len(ids)
    assert preds["split"].sort_index().equals(given.sort_index().rename("split"))


def test_the_split_files_content_is_in_the_trial_key(tmp_path):
    ids = get_dataset("digits-shift").load(0).table["sample_id"].to_numpy()
    path = tmp_path / "s.csv"
    base = dict(dataset="digits-shift", attribute="style", method="erm")
    plain = trial_key(TrialConfig(**base))
    write_split(path, ids, shuffled_split(ids, 0))
    first = trial_key(TrialConfig(**base, dataset_options={"split_file": str(path)}))
    write_split(path, ids, shuffled_split(ids, 1))
    second = trial_key(TrialConfig(**base, dataset_options={"split_file": str(path)}))
    assert len({plain, first, second}) == 3
    assert trial_key(TrialConfig(**base, train_predictions=True)) != plain


def test_a_tabular_dataset_fits_its_encoding_on_the_files_train_rows(tmp_path):
    """The shared tabular loader (german, compas, bank, acs-income) splits by the file before fitting its scaler."""
    own = get_dataset("german").load(0)
    ids = own.table["sample_id"].to_numpy()
    split = shuffled_split(ids, 5, (0.6, 0.2, 0.2))
    bundle = get_dataset("german", split_file=write_split(tmp_path / "g.csv", ids, split)).load(0)
    assert np.array_equal(bundle.table["split"].to_numpy(object), split)
    train = split == "train"
    # Some column is standardised: mean 0 on the file's training rows, not on the dataset's own.
    col = int(np.argmax(np.abs(own.x[own.table["split"].to_numpy() == "train"]).std(axis=0)))
    assert abs(bundle.x[train, col].astype(np.float64).mean()) < 1e-4
    assert not np.allclose(bundle.x[:, col], own.x[:, col])
