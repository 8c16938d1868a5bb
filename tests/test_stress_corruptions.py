"""Image corruptions change pixels by the stated severity, reproducibly; bad requests fail clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from noharm.bench.stress.corruptions import CORRUPTIONS, PARAMETERS, corrupt, gaussian_blur, parameter
from noharm.bench.errors import ConfigError


def gray(n: int = 8, value: int = 128, side: int = 32) -> np.ndarray:
    return np.full((n, 3, side, side), value, np.uint8)


def natural(n: int = 4, side: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random images (JPEG and blur act visibly on them)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 3, side // 4, side // 4)).astype(np.uint8)
    return coarse.repeat(4, axis=2).repeat(4, axis=3)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_noise_has_the_stated_standard_deviation(severity):
    x = gray(16)
    out = corrupt(x, "noise", severity, seed=0)
    change = (out.astype(float) - x) / 255
    sd = PARAMETERS["noise"][severity - 1]
    assert change.std() == pytest.approx(sd, rel=0.05)  # mid-grey: no clipping
    assert abs(change.mean()) < 0.01


@pytest.mark.parametrize("severity", [1, 4, 5])
def test_contrast_scales_deviations_from_the_mean(severity):
    x = natural(4)
    out = corrupt(x, "contrast", severity).astype(float)
    c = PARAMETERS["contrast"][severity - 1]
    mean = x.reshape(4, -1).mean(axis=1)[:, None, None, None]
    expected = (x - mean) * c + mean
    assert np.abs(out - expected).max() <= 0.5 + 1e-6  # only the final rounding to uint8


@pytest.mark.parametrize("severity", [1, 5])
def test_blur_spreads_a_point_by_sigma(severity):
    x = np.zeros((1, 1, 33, 33), np.float32)
    x[0, 0, 16, 16] = 1.0
    import torch

    sigma = PARAMETERS["blur"][severity - 1]
    out = gaussian_blur(torch.from_numpy(x), sigma)[0, 0].numpy()
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # blur moves mass, keeps it
    coords = np.arange(33) - 16
    var_x = (out.sum(axis=0) * coords**2).sum()
    # The spread is that of a Gaussian of standard deviation sigma sampled at whole pixels out to 3 sigma
    # (for small sigma below sigma^2: the sampled tails are thin).
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    assert var_x == pytest.approx((k * t**2).sum() / k.sum(), rel=1e-3)
    if sigma >= 1:
        assert var_x == pytest.approx(sigma**2, rel=0.02)


def test_blur_is_stronger_at_higher_severity_and_scales_with_size():
    x = natural(2)
    changes = [np.abs(corrupt(x, "blur", s).astype(float) - x).mean() for s in range(1, 6)]
    assert all(a < b for a, b in zip(changes, changes[1:]))
    big = natural(1, side=64).astype(np.uint8)
    # At 64 px the sigma doubles: blur at 64 px equals blur of the same image with sigma 2 * s.
    import torch

    ref = gaussian_blur(torch.from_numpy(big).float() / 255, 2 * PARAMETERS["blur"][2])
    ours = corrupt(big, "blur", 3).astype(float) / 255
    assert np.abs(ours - ref.clamp(0, 1).numpy()).max() <= 0.5 / 255 + 1e-6


def test_jpeg_is_pillows_round_trip_at_the_stated_quality():
    x = natural(2)
    out = corrupt(x, "jpeg", 4)
    buf = io.BytesIO()
    Image.fromarray(np.transpose(x[1], (1, 2, 0))).save(buf, format="JPEG", quality=PARAMETERS["jpeg"][3])
    buf.seek(0)
    assert np.array_equal(out[1], np.transpose(np.asarray(Image.open(buf).convert("RGB")), (2, 0, 1)))
    errors = [np.abs(corrupt(x, "jpeg", s).astype(float) - x).mean() for s in (1, 3, 5)]
    assert errors[0] < errors[1] < errors[2]


def test_grayscale_jpeg_and_shapes():
    x = natural(2)[:, :1]
    out = corrupt(x, "jpeg", 2)
    assert out.shape == x.shape and out.dtype == np.uint8


def test_severity_zero_is_the_identity_and_noise_is_seeded():
    x = natural(3)
    for name in CORRUPTIONS:
        assert np.array_equal(corrupt(x, name, 0), x)
    a, b, c = corrupt(x, "noise", 2, seed=1), corrupt(x, "noise", 2, seed=1), corrupt(x, "noise", 2, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_requests():
    with pytest.raises(ConfigError, match="unknown corruption 'fog'; choose one of: noise, blur, contrast, jpeg"):
        corrupt(gray(), "fog", 1)
    with pytest.raises(ConfigError, match=r"integer 0..5 \(0 = clean\), got 6"):
        parameter("noise", 6)
    with pytest.raises(ConfigError, match="uint8 images"):
        corrupt(gray().astype(np.float32), "noise", 1)
    with pytest.raises(ConfigError, match="jpeg corruption needs 1 or 3 channels, got 2"):
        corrupt(gray()[:, :2], "jpeg", 1)
