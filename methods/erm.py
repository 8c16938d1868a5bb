"""Pooled empirical risk minimisation: the baseline every group is compared against."""

from methods import register_method
from methods.training import TorchMethod


@register_method("erm")
class ERM(TorchMethod):
    description = "Pooled ERM: one model, cross-entropy over all groups"
    paper = "Vapnik (1992), principles of risk minimization"
