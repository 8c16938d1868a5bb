"""Batched train-time augmentation: the face protocol's per-sample random resized crop and flip."""

from __future__ import annotations

import torch

from noharm.datasets.augment import apply_augment, resized_crop_flip


def ramp(b=64, c=3, s=16):
    """Images whose value is the column index: crops and flips show up as changes of slope."""
    x = torch.arange(s, dtype=torch.float32).view(1, 1, 1, s).expand(b, c, s, s)
    return x.contiguous()


def test_full_crops_are_the_image_or_its_mirror_chosen_per_sample():
    x = torch.randn(64, 3, 12, 12)
    out = resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = (out - x).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same | mirrored).all()
    assert 15 < int(mirrored.sum()) < 49  # about half, per sample


def test_crops_zoom_in_per_sample():
    x = ramp()
    out = resized_crop_flip(x, torch.Generator().manual_seed(1), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    # A crop of half the width resampled to full width halves the ramp's slope.
    slope = (out[:, 0, 8, 1:] - out[:, 0, 8, :-1]).abs().mean(1)
    assert torch.allclose(slope, torch.full_like(slope, 0.5), atol=0.05)
    # Crop positions differ between samples: the centre column's value varies.
    assert out[:, 0, 8, 8].std() > 0.5
    # The crop stays inside the image: no value outside the source range.
    assert out.min() >= 0 and out.max() <= 15


def test_default_face_protocol_is_deterministic_and_varied():
    x = torch.randn(32, 3, 16, 16)
    a = apply_augment(x, "resized_crop_flip", torch.Generator().manual_seed(3))
    b = apply_augment(x, "resized_crop_flip", torch.Generator().manual_seed(3))
    c = apply_augment(x, "resized_crop_flip", torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Per-sample parameters: no two samples get the identical transform of a shared image.
    shared = ramp(b=32)
    out = apply_augment(shared, "resized_crop_flip", torch.Generator().manual_seed(5))
    assert torch.unique(out[:, 0, 8, :].round(decimals=3), dim=0).shape[0] == 32


def test_flip_and_crop_flip_keep_their_behaviour():
    x = torch.randn(40, 3, 16, 16)
    flipped = apply_augment(x, "flip", torch.Generator().manual_seed(0))
    rows_same = (flipped == x).flatten(1).all(1)
    rows_mirror = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (rows_same | rows_mirror).all() and rows_mirror.any() and rows_same.any()
    cropped = apply_augment(x, "crop_flip", torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape
