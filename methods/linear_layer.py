"""Linear layers fitted by scikit-learn on frozen, standardised features, written into a torch `nn.Linear`.

DFR's retrained last layer and FSCL's classifier on frozen features are both
a logistic regression on standardised backbone features; this module turns
such a fit into logits a torch head computes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from sklearn.preprocessing import StandardScaler


def linear_to_logits(coef: np.ndarray, intercept: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's (coef_, intercept_) as a [C, D] weight and [C] bias whose argmax / softmax make the same decisions.

    Binary models have one row w: logits (-w/2, w/2) differ by w.x + b, so the
    softmax is the model's own sigmoid.
    """
    if coef.shape[0] == 1 and num_classes == 2:
        return np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def full_classes(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Logit weights for the `classes` seen in a fit, widened to every class; unseen classes get a -inf-like bias."""
    if len(classes) == num_classes:
        return coef, intercept
    # Some classes never appeared in the fit: they can never be predicted.
    w = np.zeros((num_classes, coef.shape[1]))
    b = np.full(num_classes, -1e4)
    w[classes], b[classes] = coef, intercept
    return w, b


def load_standardised(layer: nn.Linear, coef: np.ndarray, intercept: np.ndarray, scaler: StandardScaler) -> None:
    """Write a linear model of standardised features into `layer`, which then reads raw features.

    W (x - mu) / s + b = (W / s) x + (b - W mu / s).
    """
    w = coef / scaler.scale_[None, :]
    b = intercept - w @ scaler.mean_
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))
