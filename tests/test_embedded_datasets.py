import numpy as np
import pytest

from noharm.datasets import DATASETS, DatasetError, Grouping, UnknownNameError, get_dataset
from noharm.datasets.adult import read_raw


@pytest.fixture(scope="module")
def adult0():
    return get_dataset("adult").load(0)


def test_adult_files_are_the_uci_originals():
    train, test = read_raw("adult.data"), read_raw("adult.test")
    assert len(train) == 32561 and len(test) == 16281
    assert set(train["income"]) == {"<=50K", ">50K"} and set(test["income"]) == {"<=50K", ">50K"}
    # UCI's documented class balance: 7,841 of 32,561 train rows earn > 50K.
    assert (train["income"] == ">50K").sum() == 7841


def test_adult_table_splits_and_attributes(adult0):
    t = adult0.table
    assert adult0.dropped == {"rows with missing values": 3620}
    assert len(t) == 45222 and adult0.x.shape == (45222, adult0.x.shape[1]) and adult0.x.dtype == np.float32
    counts = t["split"].value_counts()
    assert counts["test"] == 15060 and counts["train"] + counts["val"] == 30162
    assert abs(counts["val"] / 30162 - 0.2) < 0.01
    assert set(t["sex"]) == {"Female", "Male"} and set(t["race"]) == {"White", "non-White"}
    assert set(t["age"]) == {"under-40", "40-plus"} and t["race5"].nunique() == 5
    assert t["sample_id"].is_unique


def test_adult_encoder_is_fitted_on_train_only(adult0):
    train = adult0.x[adult0.table["split"].to_numpy() == "train"]
    # Standardised numeric columns: mean 0, sd 1 on train rows exactly, not on all rows.
    assert np.allclose(train[:, :6].mean(axis=0), 0, atol=1e-4)
    assert np.allclose(train[:, :6].std(axis=0), 1, atol=1e-3)
    everything = adult0.x[:, :6].mean(axis=0)
    assert not np.allclose(everything, 0, atol=1e-4)


def test_adult_split_is_deterministic_per_seed(adult0):
    again = get_dataset("adult").load(0)
    other = get_dataset("adult").load(1)
    assert (adult0.table["split"] == again.table["split"]).all()
    assert np.array_equal(adult0.x, again.x)
    assert (adult0.table["split"] != other.table["split"]).any()
    assert (other.table["split"] == "test").sum() == 15060


def test_digits_shift_construction():
    b = get_dataset("digits-shift").load(0)
    t = b.table
    assert b.x.shape == (1797, 3, 32, 32) and b.x.dtype == np.uint8
    share = (t["style"] == "shifted").mean()
    assert 0.2 < share < 0.3
    standard = b.x[t["style"].to_numpy() == "standard"].astype(float)
    shifted = b.x[t["style"].to_numpy() == "shifted"].astype(float)
    # Inverted intensity: mostly-light shifted images, mostly-dark standard ones; tinted channels differ.
    assert standard.mean() < 100 and shifted[:, 0].mean() > 120
    assert shifted[:, 0].mean() > shifted[:, 2].mean() + 30
    assert abs(standard[:, 0].mean() - standard[:, 2].mean()) < 2
    assert set(t["y"]) == {0, 1}
    ten = get_dataset("digits-shift", target="digit", image_size=16).load(0)
    assert ten.num_classes == 10 and ten.x.shape[2:] == (16, 16)
    # The same shift_seed gives the same images whatever the trial seed; splits follow the trial seed.
    b1 = get_dataset("digits-shift").load(1)
    assert np.array_equal(b.x, b1.x) and (b.table["split"] != b1.table["split"]).any()
    g = Grouping.from_table(t, "style", b.attributes)
    assert g.names == ("shifted", "standard")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: get_dataset("nope"), "unknown dataset 'nope'; choose one of: "),
        (lambda: get_dataset("adult", target="age"), "unknown target 'age' for dataset 'adult'; choose one of: income"),
        (lambda: get_dataset("digits-shift", image_size=4), "image_size must be between 8 and 256"),
        (lambda: get_dataset("adult", colour="red"), "unknown option(s) colour for dataset 'adult'"),
    ],
)
def test_bad_dataset_input(call, message):
    with pytest.raises((DatasetError, UnknownNameError)) as err:
        call()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_registry_lists_embedded_datasets():
    assert {"adult", "digits-shift"} <= set(DATASETS.names())
