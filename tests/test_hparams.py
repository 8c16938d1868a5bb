import pytest

from noharm.methods.hparams import Bool, Choice, Float, HparamError, Int, LogFloat, Text, parse_assignments, resolve, search_space

DECL = {
    "lr": LogFloat(1e-3, low=1e-5, high=1e-1),
    "alpha": Float(0.5, low=0.0, high=1.0),
    "epochs": Int(20, low=5, high=100, search=False),
    "opt": Choice("adam", choices=("adam", "sgd")),
    "flag": Bool(False),
    "path": Text(""),
}


def test_defaults_and_typed_overrides():
    hp = resolve(DECL, {"lr": "0.01", "epochs": "7", "opt": "sgd", "flag": "true", "path": "/x.pth"})
    assert hp == {"lr": 0.01, "alpha": 0.5, "epochs": 7, "opt": "sgd", "flag": True, "path": "/x.pth"}
    assert isinstance(hp["epochs"], int) and isinstance(hp["lr"], float)
    assert resolve(DECL) == {k: p.default for k, p in DECL.items()}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"nope": 1}, "unknown hparam 'nope'"),
        ({"lr": "fast"}, "takes a number"),
        ({"lr": "nan"}, "must be finite"),
        ({"epochs": "2.5"}, "takes an integer"),
        ({"epochs": True}, "takes an integer"),
        ({"opt": "rmsprop"}, "takes one of ['adam', 'sgd']"),
    ],
)
def test_bad_overrides_say_what_is_accepted(override, fragment):
    with pytest.raises(HparamError, match=None) as err:
        resolve(DECL, override, owner="m")
    assert fragment in str(err.value)


def test_parse_assignments():
    assert parse_assignments(["lr=0.1", " epochs = 3 "]) == {"lr": "0.1", "epochs": "3"}
    with pytest.raises(HparamError, match="name=value"):
        parse_assignments(["lr"])


def test_search_space_has_domains_for_searched_and_constants_otherwise():
    from ray.tune.search.sample import Categorical, Float as TuneFloat, Integer

    space = search_space(DECL, fixed={"alpha": "0.25"})
    assert isinstance(space["lr"], TuneFloat) and space["lr"].lower == 1e-5 and space["lr"].upper == 1e-1
    assert space["alpha"] == 0.25  # fixed override wins over the search
    assert space["epochs"] == 20  # not searched
    assert isinstance(space["opt"], Categorical) and space["opt"].categories == ["adam", "sgd"]
    assert space["flag"] is False and space["path"] == ""
    searched_int = search_space({"k": Int(3, low=1, high=4)})["k"]
    assert isinstance(searched_int, Integer) and searched_int.upper == 5  # inclusive bound
