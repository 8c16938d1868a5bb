"""The first trial of every search is the method's declared defaults."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from noharm.bench.sweep.searcher import declared_defaults, draw_settings
from noharm.methods import get_method
from noharm.methods.hparams import search_space


def test_first_trial_is_the_declared_defaults_and_fits_the_space():
    for method in ("erm", "fairsde", "fairsde-no-disc", "groupdro"):
        cls = get_method(method)
        space = OptunaSearch.convert_search_space(search_space(cls.hparams, {}))
        got = declared_defaults(method, space)
        assert got and got == {k: cls.hparams[k].default for k in space}
        # The defaults are valid points of the space: the sampler can be told them as history.
        later = draw_settings(space, [(got, 0.5)], seed=1)
        assert set(later) == set(space) and later != got
