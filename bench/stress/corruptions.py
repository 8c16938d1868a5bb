"""Image corruptions at 5 severities (after Hendrycks & Dietterich 2019, CIFAR-10-C strengths), seeded and batched.

Images are uint8 [N, C, H, W]; every function returns a new uint8 array of the
same shape. Severity 0 is the identity; 1..5 use the parameters below (pixel
values in [0, 1]):

- `noise`: additive Gaussian noise with standard deviation s.
- `blur`: Gaussian blur with standard deviation s pixels at 32 px, scaled
  with the image side (s * min(H, W) / 32), reflect-padded.
- `contrast`: each image's deviation from its own mean intensity scaled by c.
- `jpeg`: JPEG compression at quality q (Pillow), one image at a time.

Noise, blur and contrast run in torch on the given device, in batches; noise
draws from a generator seeded by `seed`, so a call is reproducible.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from noharm.bench.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS: dict[str, tuple[float, ...]] = {
    "noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # standard deviation
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels at 32 px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the deviation from the mean
    "jpeg": (80, 65, 58, 50, 40),  # quality
}
CORRUPTIONS = tuple(PARAMETERS)
BATCH = 512  # images per torch batch


def parameter(name: str, severity: int) -> float:
    """The strength of corruption `name` at `severity` (1..5); raises ConfigError on unknown values."""
    if name not in PARAMETERS:
        raise ConfigError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES) or isinstance(severity, bool):
        raise ConfigError(f"corruption severity must be an integer 0..5 (0 = clean), got {severity!r}")
    return math.nan if severity == 0 else PARAMETERS[name][int(severity) - 1]


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, device: str | torch.device = "cpu",
            batch_size: int = BATCH) -> np.ndarray:
    """`images` (uint8 [N, C, H, W]) under corruption `name` at `severity`; a new uint8 array."""
    value = parameter(name, severity)
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ConfigError(f"corruptions apply to uint8 images [N, C, H, W], got {x.dtype} array of shape {x.shape}")
    if severity == 0:
        return x.copy()
    if name == "jpeg":
        return _jpeg(x, int(value))
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device).float() / 255.0
        if name == "noise":
            noise = torch.randn(batch.shape, generator=gen).to(device)
            batch = batch + value * noise
        elif name == "blur":
            batch = gaussian_blur(batch, value * min(x.shape[2], x.shape[3]) / 32.0)
        elif name == "contrast":
            mean = batch.mean(dim=(1, 2, 3), keepdim=True)
            batch = (batch - mean) * value + mean
        out[start:start + len(batch)] = (batch.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return out


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian weights over [-ceil(3 sigma), ceil(3 sigma)]."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float images [B, C, H, W], reflect padding (padding shrinks on tiny images)."""
    k = gaussian_kernel(sigma).to(x.device)
    c = x.shape[1]
    r = len(k) // 2
    for dim in (3, 2):  # width, then height
        size = x.shape[dim]
        pad = min(r, size - 1)  # reflect padding must be smaller than the side
        weight = k[r - pad:r + pad + 1] if pad < r else k
        weight = weight / weight.sum()
        view = (1, 1, 1, len(weight)) if dim == 3 else (1, 1, len(weight), 1)
        padding = (pad, pad, 0, 0) if dim == 3 else (0, 0, pad, pad)
        kernel = weight.view(view).expand(c, *view[1:]).contiguous()  # one filter per channel
        x = F.conv2d(F.pad(x, padding, mode="reflect"), kernel, groups=c)
    return x


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    c = x.shape[1]
    if c not in (1, 3):
        raise ConfigError(f"jpeg corruption needs 1 or 3 channels, got {c}")
    out = np.empty_like(x)
    for i, img in enumerate(x):
        arr = img[0] if c == 1 else np.transpose(img, (1, 2, 0))
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("L" if c == 1 else "RGB"))
        out[i] = dec[None] if c == 1 else np.transpose(dec, (2, 0, 1))
    return out
