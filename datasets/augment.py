"""Batched train-time augmentation on device tensors (no per-sample Python work).

Protocols: "flip" (horizontal flip), "crop_flip" (random crop after reflection
padding, plus flip; the medical-image protocol), "resized_crop_flip" (the face
protocol: a random-resized crop per sample, resampled to the input size, plus
flip). Applied to normalised float batches [B, C, H, W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("flip", "crop_flip", "resized_crop_flip")
# Random-resized-crop ranges of the face protocol: crop area as a fraction of the
# image, and crop aspect ratio (width / height), sampled log-uniformly.
RRC_SCALE = (0.5, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def apply_augment(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Augment a batch: "flip", "crop_flip" (4-px-style reflect-pad crop + flip) or "resized_crop_flip"."""
    if kind == "resized_crop_flip":
        return resized_crop_flip(x, generator)
    b = x.shape[0]
    if kind in ("flip", "crop_flip"):
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    if kind == "crop_flip":
        pad = max(1, x.shape[-1] // 8)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        # One offset per batch keeps this a single slice (no per-sample loop).
        x = padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return x


def resized_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator | None,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """Per-sample random resized crop plus horizontal flip, as one batched `grid_sample`.

    Each sample gets its own crop: area fraction ~ U(scale), aspect ratio
    log-uniform in `ratio`, position uniform over where the crop fits; the crop
    is resampled (bilinear) to the input size and mirrored with probability 1/2.
    Random numbers are drawn on the CPU from `generator` so results do not
    depend on the device.
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    # Crop width and height as fractions of the image side; clamp so the crop fits.
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    # Centre in normalised coordinates [-1, 1]: anywhere the crop stays inside the image.
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * sign  # a negative x scale mirrors the crop
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
