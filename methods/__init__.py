"""How a model is trained: the method registry, backbones, the training loop and selection."""

from noharm.registry import Registry, UnknownNameError
from noharm.methods.base import FitContext, Method, Predictor, TaskData

METHODS: Registry[type[Method]] = Registry("method", entry_point_group="noharm.methods")
register_method = METHODS.register


def get_method(name: str) -> type[Method]:
    """The method class registered as `name` (plugins included)."""
    return METHODS.get(name)


# Built-in methods register themselves on import.
from noharm.methods import erm  # noqa: E402,F401
from noharm.methods import fairsde  # noqa: E402,F401
from noharm.methods import adv_debias, adv_rep, decoupled, group_models  # noqa: E402,F401
from noharm.methods import dfr, fairmixup, fin, fscl, gapreg, group_threshold, groupdro, laftr, resample, reweight  # noqa: E402,F401

__all__ = ["METHODS", "FitContext", "Method", "Predictor", "TaskData", "UnknownNameError", "get_method", "register_method"]
