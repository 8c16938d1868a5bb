"""bf16 training stays close to fp32; channels-last changes the memory layout, not the numbers."""

import pytest

from noharm.bench.errors import ConfigError
from noharm.bench.trial import TrialConfig, run_trial

DIGITS = {"epochs": 3, "backbone": "cnn", "batch_size": 64, "lr": 3e-3}
# Stated tolerance (README, "Precision"): bf16's validation accuracy within 0.05 of fp32's.
BF16_TOLERANCE = 0.05


def _trial(**kw):
    return run_trial(TrialConfig(dataset="digits-shift", attribute="style", method="erm", seed=0,
                                 hparams=DIGITS, dataset_options={"image_size": 16}, **kw), device="cpu")


def test_bf16_trains_to_within_tolerance_of_fp32():
    fp32, bf16 = _trial(precision="fp32"), _trial(precision="bf16")
    a, b = fp32.metrics["val/model/acc"], bf16.metrics["val/model/acc"]
    assert a > 0.75 and b > 0.75  # both actually learned
    assert abs(a - b) <= BF16_TOLERANCE
    assert fp32.metrics != bf16.metrics  # bf16 really ran in reduced precision
    assert bf16.cost["channels_last"] == 1.0 and fp32.cost["channels_last"] == 0.0


def test_channels_last_does_not_change_the_result():
    off, on = _trial(channels_last="off"), _trial(channels_last="on")
    assert on.cost["channels_last"] == 1.0
    assert on.metrics["val/model/acc"] == pytest.approx(off.metrics["val/model/acc"], abs=0.02)
    assert on.metrics["val/model/auc"] == pytest.approx(off.metrics["val/model/auc"], abs=0.01)


def test_fp16_on_cpu_and_bad_settings_are_refused():
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
            _trial(precision="fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        TrialConfig(dataset="adult", attribute="sex", method="erm", precision="int8").validate()
    with pytest.raises(ConfigError, match="unknown channels_last"):
        TrialConfig(dataset="adult", attribute="sex", method="erm", channels_last="maybe").validate()
