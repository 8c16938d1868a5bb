"""Pooled empirical risk minimisation: the baseline every group is compared against."""

from noharm.methods import register_method
from noharm.methods.hparams import Choice
from noharm.methods.training import TRAINING_HPARAMS, TorchMethod


@register_method("erm")
class ERM(TorchMethod):
    """Pooled ERM. As the no-harm reference it must be the strongest pooled model under the methods' budget, so
    its optimiser (AdamW or SGD) is searched along with lr and weight decay; epochs and batch size are the
    suite's, the same as every method's on that dataset."""

    description = "Pooled ERM: one model, cross-entropy over all groups"
    paper = "Vapnik (1992), principles of risk minimization"
    hparams = {**TRAINING_HPARAMS, "optimizer": Choice("adam", choices=("adam", "sgd"), search=True)}
