"""digits-shift: scikit-learn's handwritten digits with a controlled group shift.

How it is made (deterministic given `shift_seed`):
1. The 1,797 8x8 digits bundled with scikit-learn (intensities 0..16) are
   scaled to 0..1 and upsampled to `image_size` px (bilinear).
2. A `style` attribute marks about `minority_fraction` (default 0.25) of the
   images, drawn with `shift_seed`, as "shifted"; the rest are "standard".
3. Standard images: white strokes on black, replicated to 3 grey channels.
4. Shifted images get a different image distribution: strokes thickened
   (3x3 max filter), rotated 90 degrees counter-clockwise, intensity inverted
   (dark strokes on a light background) and tinted (R, G, B gains 1.0, 0.8, 0.5).
5. Every image gets Gaussian pixel noise (sd 0.05, from `shift_seed`), then is
   stored as uint8.
A pooled model must learn both styles from a quarter of shifted data, so
group-specific experts and the pooled model genuinely differ.
Target `binary` (default): digit >= 5; target `digit`: the 10 classes.
Splits: 60/20/20, stratified by (style, label), seeded by the trial seed.

Natural shift, `held_out_styles=slant,thin` (also `erode`): for each style the
test digits are drawn again, each in its group's style but on strokes the
style transforms first (slant: sheared to italic; thin: intensity cubed;
erode: 3x3 minimum filter), with their own pixel noise, as split
`shift:<style>` (sample ids `<id>-<style>`). No image of that stroke is ever
trained on, validated on, or selected on: both groups see a covariate shift,
the minority one on top of its own style.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from noharm.datasets import register_dataset
from noharm.datasets.base import DataBundle, DatasetError, GroupDataset, is_shift
from noharm.datasets.shifts import check_distinct_names, shift_name
from noharm.datasets.splits import stratified_assign

TINT = (1.0, 0.8, 0.5)


def _slant(x: torch.Tensor, shear: float = 0.35) -> torch.Tensor:
    """Italic strokes: a horizontal shear (x' = x + 0.35 y), bilinear."""
    theta = torch.tensor([[1.0, shear, 0.0], [0.0, 1.0, 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _thin(x: torch.Tensor) -> torch.Tensor:
    """Faint, thin strokes: intensity cubed, so only the stroke's core stays bright."""
    return x ** 3


def _erode(x: torch.Tensor) -> torch.Tensor:
    """Eroded strokes: a 3x3 minimum filter (the opposite of the shifted group's thickening)."""
    return -F.max_pool2d(-x, kernel_size=3, stride=1, padding=1)


# Held-out stroke transforms (`held_out_styles`): never in training; each redraws the test digits, in their own
# group's style, on the transformed strokes. Measured in bench/perf/RESULTS.md ("digits-shift held-out styles"):
# each lowers both groups' accuracy and leaves the minority far above chance (an outline stroke took every model
# to chance, a broken stroke left the thickened minority untouched; neither is offered).
STROKES = {"slant": _slant, "thin": _thin, "erode": _erode}


def make_images(images8: np.ndarray, shifted: np.ndarray, image_size: int, seed: int,
                stroke: str | None = None) -> np.ndarray:
    """Build uint8 [N, 3, S, S] images from 8x8 digits, applying the shift to `shifted` rows (and, for a
    held-out style, the stroke transform `stroke` to every row)."""
    x = torch.from_numpy(images8.astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if stroke is not None:
        x = STROKES[stroke](x).clamp(0, 1)
    s = torch.from_numpy(shifted)
    thick = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    x = torch.where(s[:, None, None, None], thick, x)
    x = torch.where(s[:, None, None, None], torch.rot90(x, 1, dims=(2, 3)), x)
    x = torch.where(s[:, None, None, None], 1.0 - x, x)
    rgb = x.repeat(1, 3, 1, 1)
    tint = torch.tensor(TINT).view(1, 3, 1, 1)
    rgb = torch.where(s[:, None, None, None], rgb * tint, rgb)
    gen = torch.Generator().manual_seed(seed)
    rgb = rgb + 0.05 * torch.randn(rgb.shape, generator=gen)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@register_dataset("digits-shift")
class DigitsShift(GroupDataset):
    description = "scikit-learn digits with a shifted-style minority group (embedded, images)"
    citation = "Alpaydin & Kaynak (1998), UCI optical recognition of handwritten digits"
    kind = "image"
    targets = {"binary": "digit >= 5 (binary)", "digit": "the digit (10 classes)"}
    default_target = "binary"
    size_note = "1,797 images, about a quarter in the shifted style"
    attributes = {"style": "standard / shifted (inverted, rotated, thick, tinted strokes)"}
    applies_split_file_itself = True  # before drawing the held-out styles of the test digits

    def __init__(
        self,
        root: str | None = None,
        target: str | None = None,
        image_size: int = 32,
        minority_fraction: float = 0.25,
        shift_seed: int = 0,
        held_out_styles=None,
        **options,
    ):
        super().__init__(root=root, target=target, **options)
        items = held_out_styles if isinstance(held_out_styles, (list, tuple)) else str(held_out_styles or "").split(",")
        self.held_out_styles = [str(v).strip() for v in items if str(v).strip()]
        unknown = [v for v in self.held_out_styles if v not in STROKES]
        if unknown:
            raise DatasetError(f"digits-shift: unknown held-out style {unknown[0]!r}; choose from: {', '.join(STROKES)}")
        check_distinct_names([(f"style {v!r}", shift_name(v)) for v in self.held_out_styles],
                             "digits-shift: held_out_styles")
        if not 8 <= int(image_size) <= 256:
            raise DatasetError(f"digits-shift: image_size must be between 8 and 256, got {image_size}")
        if not 0.0 < float(minority_fraction) < 1.0:
            raise DatasetError(f"digits-shift: minority_fraction must be in (0, 1), got {minority_fraction}")
        self.image_size = int(image_size)
        self.minority_fraction = float(minority_fraction)
        self.shift_seed = int(shift_seed)

    @classmethod
    def shift_help(cls) -> str:
        return f"held_out_styles=STYLE[,STYLE...], STYLE one of: {', '.join(STROKES)} (the test digits redrawn)"

    def load(self, seed: int) -> DataBundle:
        from sklearn.datasets import load_digits

        digits = load_digits()
        n = len(digits.target)
        rng = np.random.default_rng(self.shift_seed)
        shifted = rng.random(n) < self.minority_fraction
        x = make_images(digits.images, shifted, self.image_size, self.shift_seed)
        digit = digits.target.astype(np.int64)
        y = digit if self.target == "digit" else (digit >= 5).astype(np.int64)
        table = pd.DataFrame({
            "sample_id": np.arange(n).astype(str),
            "y": y,
            "style": np.where(shifted, "shifted", "standard"),
        })
        split = stratified_assign(table[["style", "y"]], (0.6, 0.2, 0.2), seed)
        table.insert(1, "split", self.file_split(table["sample_id"], split))
        table, x = self.with_held_out_styles(table, x, digits.images, shifted)
        class_names = [str(d) for d in range(10)] if self.target == "digit" else ["0-4", "5-9"]
        return DataBundle(
            name=self.name, table=table, x=x, num_classes=len(class_names), kind="image",
            class_names=class_names, attributes=["style"],
            mean=(0.45, 0.43, 0.40), std=(0.35, 0.33, 0.30), augment=None,
        )

    def with_held_out_styles(self, table: pd.DataFrame, x: np.ndarray, images8: np.ndarray,
                             shifted: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """The table and images plus, per held-out style, the test digits drawn in it as split `shift:<style>`
        (pixel noise seeded by the style, so a style's images do not depend on which others are listed)."""
        if not self.held_out_styles:
            return table, x
        test = np.flatnonzero(table["split"].to_numpy() == "test")
        tables, images = [table], [x]
        for style in self.held_out_styles:
            copy = table.iloc[test].assign(split=shift_name(style),
                                           sample_id=table["sample_id"].iloc[test] + f"-{style}")
            tables.append(copy)
            images.append(make_images(images8[test], shifted[test], self.image_size,
                                      self.shift_seed + 1 + list(STROKES).index(style), stroke=style))
        named = [("the split file", s) for s in pd.unique(table["split"]) if is_shift(s)]
        check_distinct_names(named + [(f"held-out style {s!r}", shift_name(s)) for s in self.held_out_styles],
                             self.name)
        return pd.concat(tables, ignore_index=True), np.concatenate(images)
