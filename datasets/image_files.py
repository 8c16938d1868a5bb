"""Reading images and metadata files of the real datasets: decode/resize with PIL, locate files, read tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from noharm.datasets.base import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def decode_image(path: str | os.PathLike, size: int, channels: int = 3) -> np.ndarray:
    """Decode one image file to uint8 [channels, size, size].

    The shorter side is resized to `size` and the centre cropped (aspect kept).
    JPEG files are decoded at a reduced scale when they are much larger than
    `size` (PIL's draft mode), which makes large chest X-rays cheap to read.
    A truncated or unreadable file raises OSError (PIL's own message).
    """
    mode = {1: "L", 3: "RGB"}[channels]
    with Image.open(path) as img:
        img.draft(mode, (size, size))
        img = ImageOps.exif_transpose(img)  # phone photos (Fitzpatrick17k, FairFace) may be rotated
        img = img.convert(mode)
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def find_first(root: Path, candidates: Iterable[str], what: str, hint: str = "") -> Path:
    """The first of `candidates` (paths relative to `root`) that exists; else one DatasetError line."""
    candidates = list(candidates)
    for rel in candidates:
        p = root / rel
        if p.exists():
            return p
    tried = ", ".join(str(root / c) for c in candidates[:4]) + (" ..." if len(candidates) > 4 else "")
    raise DatasetError(f"{what} not found (looked for {tried}){'; ' + hint if hint else ''}")


def list_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """File name -> path for the image files directly inside `folder` (one directory listing).

    Symbolic links count even when dangling, so a dataset linked from elsewhere
    reports a broken link as a missing image instead of silently losing it.
    """
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.lower().endswith(suffixes) and (entry.is_symlink() or entry.is_file()):
                out[entry.name] = Path(entry.path)
    return out


def read_table(path: Path, required: Iterable[str], dataset: str, **read_csv_kwargs) -> pd.DataFrame:
    """Read a CSV (gzip by suffix) and check its columns; problems become one DatasetError line."""
    try:
        df = pd.read_csv(path, **read_csv_kwargs)
    except FileNotFoundError:
        raise DatasetError(f"{dataset}: metadata file {str(path)!r} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DatasetError(f"{dataset}: cannot read {str(path)!r} as CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{dataset}: {path.name} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns[:12]))}); "
            "is this the official file?"
        )
    return df


def plain(value):
    """A numpy scalar as the Python value it holds, so messages read 7, not np.int64(7)."""
    return value.item() if hasattr(value, "item") else value


def check_values(values: pd.Series, allowed: Iterable, column: str, source: str, dataset: str) -> None:
    """Fail loudly (one line) when a column holds a value outside the documented vocabulary."""
    allowed = set(allowed)
    bad = values[~values.isin(allowed)]
    if len(bad):
        examples = ", ".join(repr(v) for v in pd.unique(bad).tolist()[:3])
        raise DatasetError(
            f"{dataset}: unexpected {column} value(s) {examples} in {len(bad)} row(s) of {source}; "
            f"expected one of: {', '.join(sorted(map(str, allowed)))}"
        )
