"""Batched train-time augmentation on device tensors (no per-sample Python work).

Protocols: "flip" (horizontal flip), "crop_flip" (random crop after reflection
padding, plus flip; the medical-image protocol), "resized_crop_flip" (the face
protocol). Applied to normalised float batches [B, C, H, W].
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("flip", "crop_flip", "resized_crop_flip")


def apply_augment(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Batched train-time augmentation: horizontal flip, random crop (4 px padding) or both."""
    b = x.shape[0]
    if kind in ("flip", "crop_flip", "resized_crop_flip"):
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    if kind in ("crop_flip", "resized_crop_flip"):
        pad = max(1, x.shape[-1] // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        # One offset per batch keeps this a single slice (no per-sample loop).
        x = padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return x
