"""Decode-once image cache: a uint8 memory-mapped array plus an index, keyed by the sources and the settings.

Layout under the cache folder (default `$NOHARM_CACHE_DIR`, else
`$XDG_CACHE_HOME/noharm`, else `~/.cache/noharm`):

    <dataset>/<key>/images.npy    uint8 [n_ok, C, S, S], the readable images in source order
    <dataset>/<key>/index.parquet path, row (position in images.npy or -1), problem ("" when readable)
    <dataset>/<key>/meta.json     settings, counts, shape; written last
    <dataset>/<key>.lock          taken while building

`key` hashes every source path with its size and modification time, plus the
preprocessing settings, so a changed file or setting gives a new key (a
rebuild) and an unchanged one reuses the folder. A build happens in a
temporary folder that is renamed into place in one step, under a file lock:
a second process building the same key waits, then reuses the first one's
result, and a crashed build never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

# Bump when the cache layout or the meaning of the settings changes.
CACHE_FORMAT = 1
CHUNK = 64  # images per decode task: small enough for a smooth progress bar

Decoder = Callable[[str], np.ndarray]


def default_cache_dir() -> Path:
    """`$NOHARM_CACHE_DIR`, else `$XDG_CACHE_HOME/noharm`, else `~/.cache/noharm`."""
    if os.environ.get("NOHARM_CACHE_DIR"):
        return Path(os.environ["NOHARM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "noharm"


def cache_key(paths: Sequence[str], settings: dict) -> str:
    """Hash of (path, size, mtime) of every source and the preprocessing settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:24]


def cache_folder(
    paths: Sequence[str], shape: tuple[int, ...], settings: dict, cache_dir: str | os.PathLike | None, name: str
) -> Path:
    """Where the cache of these sources and settings lives (whether or not it exists yet)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / name / cache_key([str(p) for p in paths], {**settings, "shape": list(shape)})


@dataclass
class CachedImages:
    """A cache folder opened for reading."""

    folder: Path
    x: np.ndarray  # uint8 [n_ok, C, S, S], copy-on-write memory map of the cache file
    ok: np.ndarray  # bool [n_sources]: decoded (row i of x is the i-th ok source)
    problems: list[tuple[str, str]]  # (path, "missing" or "unreadable: <reason>") for every bad source
    built: bool  # True when this call decoded the images, False when it reused a cache


def load_or_build(
    paths: Sequence[str],
    decode: Decoder,
    shape: tuple[int, int, int],
    settings: dict,
    cache_dir: str | os.PathLike | None = None,
    name: str = "images",
    workers: int | None = None,
    progress: bool = True,
) -> CachedImages:
    """Open the cache of `paths` decoded by `decode` into `shape`, building it first if needed.

    `settings` must name everything that changes the pixels (image size,
    channels, decoder version). Missing and unreadable sources are recorded,
    not raised: callers decide whether that is fatal.
    """
    paths = [str(p) for p in paths]
    folder = cache_folder(paths, shape, settings, cache_dir, name)
    if _complete(folder):
        return _open(folder, built=False)
    with build_lock(folder, f"{name}: another process is building the image cache {folder}; waiting for it"):
        if _complete(folder):  # built by the process we waited for
            return _open(folder, built=False)
        _build(folder, paths, decode, shape, settings, name, workers, progress)
        return _open(folder, built=True)


@contextmanager
def build_lock(folder: Path, waiting_message: str) -> Iterator[None]:
    """Hold the build lock of cache entry `folder`, waiting (and saying so on stderr) while another process builds.

    Once held, partial folders left by a crashed build of the same key are removed.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(waiting_message, file=sys.stderr)
        lock.acquire()
    try:
        for stale in folder.parent.glob(f".{folder.name}.partial-*"):  # left by a crashed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.release()


def _complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def _open(folder: Path, built: bool) -> CachedImages:
    meta = json.loads((folder / "meta.json").read_text())
    index = pd.read_parquet(folder / "index.parquet")
    n_ok = int(meta["n_ok"])
    if n_ok:
        # Copy-on-write: writable for consumers such as torch.from_numpy, yet a write
        # only changes this process's private copy of the page, never the cache file.
        x = np.load(folder / "images.npy", mmap_mode="c")
    else:  # numpy cannot memory-map an empty array
        x = np.zeros((0, *meta["shape"]), dtype=np.uint8)
    if x.shape != (n_ok, *meta["shape"]):
        raise OSError(f"image cache {folder} is damaged (array {x.shape}, expected {(n_ok, *meta['shape'])}); delete it")
    ok = index["row"].to_numpy() >= 0
    bad = index[~ok]
    return CachedImages(
        folder=folder, x=x, ok=ok, built=built,
        problems=list(zip(bad["path"].tolist(), bad["problem"].tolist())),
    )


def _decode_chunk(
    out: np.ndarray, start: int, paths: Sequence[str], decode: Decoder, shape: tuple[int, ...]
) -> list[tuple[int, str]]:
    """Decode paths[i] into out[start + i]; return (position, problem) for the bad ones."""
    problems = []
    for i, p in enumerate(paths):
        try:
            img = decode(p)
            if img.shape != shape or img.dtype != np.uint8:
                raise ValueError(f"decoded to {img.dtype} {img.shape}, expected uint8 {shape}")
            out[start + i] = img
        except FileNotFoundError:
            problems.append((start + i, "missing"))
        except Exception as exc:  # any decoder failure is a property of the file: record it
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append((start + i, f"unreadable: {msg}"))
    return problems


def _build(
    folder: Path, paths: list[str], decode: Decoder, shape: tuple[int, int, int], settings: dict,
    name: str, workers: int | None, progress: bool,
) -> None:
    from tqdm.auto import tqdm

    n = len(paths)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        full = np.lib.format.open_memmap(stage / "images.npy", mode="w+", dtype=np.uint8, shape=(max(n, 1), *shape))
        problems: dict[int, str] = {}
        workers = workers or min(8, os.cpu_count() or 1)
        chunks = [(s, paths[s:s + CHUNK]) for s in range(0, n, CHUNK)]
        # Threads, not processes: PIL releases the GIL while decoding and
        # resizing, and threads write straight into the shared memory map.
        # disable=None shows the bar only when stderr is a terminal.
        with tqdm(total=n, desc=f"{name}: decoding images", unit="img", disable=True if not progress else None,
                  mininterval=1.0, file=sys.stderr) as bar:
            if workers <= 1 or len(chunks) <= 1:
                for s, chunk in chunks:
                    problems.update(_decode_chunk(full, s, chunk, decode, shape))
                    bar.update(len(chunk))
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(_decode_chunk, full, s, c, decode, shape): len(c) for s, c in chunks}
                    for fut in as_completed(futures):
                        problems.update(fut.result())
                        bar.update(futures[fut])
        ok = np.ones(n, dtype=bool)
        ok[list(problems)] = False
        n_ok = int(ok.sum())
        full.flush()
        del full
        if n_ok != n:
            _compact(stage / "images.npy", ok, shape)
        rows = np.full(n, -1, dtype=np.int64)
        rows[ok] = np.arange(n_ok)
        pd.DataFrame({
            "path": paths, "row": rows, "problem": [problems.get(i, "") for i in range(n)],
        }).to_parquet(stage / "index.parquet", index=False)
        meta = {"format": CACHE_FORMAT, "settings": settings, "shape": list(shape), "n": n, "n_ok": n_ok}
        (stage / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        os.replace(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _compact(path: Path, ok: np.ndarray, shape: tuple[int, ...]) -> None:
    """Rewrite images.npy with the readable rows only, so readers never copy to skip bad ones."""
    src = np.load(path, mmap_mode="r")
    tmp = path.with_name("images.compact.npy")
    n_ok = int(ok.sum())
    if n_ok:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n_ok, *shape))
        good = np.flatnonzero(ok)
        for s in range(0, n_ok, 1024):
            dst[s:s + 1024] = src[good[s:s + 1024]]
        dst.flush()
        del dst
    else:
        np.save(tmp, np.zeros((0, *shape), dtype=np.uint8))
    del src
    os.replace(tmp, path)
