"""Epoch time reading images through the decode-once cache versus decoding the JPEG files every epoch.

Run by hand: `.venv/bin/python bench/perf/data_cache.py [--n 3000] [--epochs 2]`.
Generates JPEG sets shaped like the protocol's sources (dermoscopy-like 600 x 450 photos resized
to 224 px; CelebA-like 178 x 218 faces resized to 64 px), builds the cache once (timed), then
times full shuffled epochs of batches of 256 both ways (uint8, and with float normalisation).
Both ways use the same decoder (`datasets.image_files.decode_image`) and decoding threads.
Appends to bench/perf/RESULTS.md. Goal: ratio >= 5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from noharm.bench.perf.common import append_results
from noharm.datasets.image_cache import load_or_build
from noharm.datasets.image_dataset import IMAGENET_MEAN, IMAGENET_STD
from noharm.datasets.image_files import decode_image

BATCH = 256


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`n` photo-like JPEG files (smooth colour fields with texture), quality 90."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        base = rng.uniform(40, 200, size=3)
        blob = np.exp(-(((xx - rng.uniform(0, w)) ** 2 + (yy - rng.uniform(0, h)) ** 2) / (2 * (0.2 * w) ** 2)))
        img = base[None, None, :] - 60 * blob[..., None] + rng.normal(0, 6, size=(h, w, 3))
        p = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def epoch_from_cache(x: np.ndarray, gen: np.random.Generator, norm: bool) -> float:
    """One shuffled epoch of batches sliced from the memory-mapped cache (as BatchSource does for big sets)."""
    order = gen.permutation(len(x))
    start = time.perf_counter()
    for s in range(0, len(order), BATCH):
        idx = np.sort(order[s:s + BATCH])
        batch = torch.from_numpy(np.ascontiguousarray(x[idx]))
        if norm:
            batch = normalise(batch)
        assert batch.shape[0] == len(idx)
    return time.perf_counter() - start


def epoch_decoding(paths: list[str], size: int, gen: np.random.Generator, pool: ThreadPoolExecutor, norm: bool) -> float:
    """One shuffled epoch decoding every JPEG again (a data loader without a cache)."""
    order = gen.permutation(len(paths))
    start = time.perf_counter()
    for s in range(0, len(order), BATCH):
        batch = torch.from_numpy(np.stack(list(pool.map(lambda i: decode_image(paths[i], size), order[s:s + BATCH]))))
        if norm:
            batch = normalise(batch)
        assert batch.shape[0] == min(BATCH, len(order) - s)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000, help="images per set")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding threads (both ways)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.workers))
    cases = [("dermoscopy-like", (600, 450), 224), ("CelebA-like faces", (178, 218), 64)]
    rows = [
        "| images | source px | stored px | batches | cache build (s, once) | epoch via cache (s) "
        "| epoch decoding JPEGs (s) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    work = Path(tempfile.mkdtemp(prefix="noharm-perf-cache-"))
    try:
        for label, src, size in cases:
            paths = write_jpegs(work / label.split()[0], args.n, src)
            t0 = time.perf_counter()
            cached = load_or_build(paths, lambda p: decode_image(p, size), (3, size, size), {"size": size},
                                   cache_dir=work / "cache", name=label.split()[0], workers=args.workers, progress=False)
            build = time.perf_counter() - t0
            gen = np.random.default_rng(0)
            with ThreadPoolExecutor(args.workers) as pool:
                epoch_decoding(paths[:BATCH], size, gen, pool, False)  # warm the file system cache alike
                for norm, what in ((False, "uint8"), (True, "uint8 + float normalisation on CPU")):
                    via_cache = min(epoch_from_cache(cached.x, gen, norm) for _ in range(args.epochs))
                    decoding = min(epoch_decoding(paths, size, gen, pool, norm) for _ in range(args.epochs))
                    rows.append(f"| {args.n} {label} | {src[0]}x{src[1]} | {size} | {what} | {build:.1f} | "
                                f"{via_cache:.3f} | {decoding:.3f} | {decoding / via_cache:.1f}x |")
                    print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    append_results(
        "data_cache.py: epoch through the image cache vs decoding JPEGs every epoch",
        f"Best of {args.epochs} shuffled epochs each, batches of {BATCH}, {args.workers} decoding threads, CPU. "
        "`uint8`: batches ready to go to the device (where training normalises them; the part that differs); "
        "`+ float normalisation on CPU`: what a CPU-only run pays per epoch on top, identical both ways. "
        "The cache is read through its memory map with the page cache warm after the build (as from the second "
        "epoch of a real run); JPEGs are decoded with PIL's draft mode (reduced-scale DCT) both ways.\n\n"
        + "\n".join(rows),
    )


if __name__ == "__main__":
    main()
