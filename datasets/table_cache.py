"""Read-once cache of a large tabular source: the filtered rows as Parquet, keyed like the image cache.

Layout under the cache folder (`$NOHARM_CACHE_DIR`, else `~/.cache/noharm`, as images):

    <dataset>/<key>/rows.parquet   the rows the loader kept, only the columns it needs
    <dataset>/<key>/meta.json      settings, drop counts; written last
    <dataset>/<key>.lock           taken while building

`key` hashes every source path with its size and modification time plus the
settings (`image_cache.cache_key`), so an edited file or a changed filter
builds a new entry. A build writes into a temporary folder renamed into place
under a file lock: a second process waits and reuses the result, and a crashed
build never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from noharm.datasets.image_cache import build_lock, cache_key, default_cache_dir

# Bump when the layout or the meaning of the settings changes.
TABLE_CACHE_FORMAT = 1

Builder = Callable[[], tuple[pd.DataFrame, dict[str, int]]]


@dataclass
class CachedTable:
    """A cache entry opened for reading."""

    folder: Path
    rows: pd.DataFrame
    dropped: dict[str, int]
    built: bool  # True when this call read the sources, False when it reused the cache


def load_or_build_table(
    sources: Sequence[str | os.PathLike], settings: dict, build: Builder, name: str,
    cache_dir: str | os.PathLike | None = None,
) -> CachedTable:
    """Open the cached rows of `sources` under `settings`, calling `build() -> (rows, dropped)` first if needed."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key([str(s) for s in sources], {"table_format": TABLE_CACHE_FORMAT, **settings})
    folder = root / name / key
    if (folder / "meta.json").is_file():
        return _open(folder, built=False)
    with build_lock(folder, f"{name}: another process is building the table cache {folder}; waiting for it"):
        if (folder / "meta.json").is_file():  # built by the process we waited for
            return _open(folder, built=False)
        rows, dropped = build()
        stage = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=folder.parent))
        try:
            rows.to_parquet(stage / "rows.parquet", index=False)
            meta = {"format": TABLE_CACHE_FORMAT, "settings": settings, "rows": len(rows), "dropped": dropped,
                    "sources": [str(s) for s in sources]}
            (stage / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
            os.replace(stage, folder)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return _open(folder, built=True)


def _open(folder: Path, built: bool) -> CachedTable:
    meta = json.loads((folder / "meta.json").read_text())
    rows = pd.read_parquet(folder / "rows.parquet")
    if len(rows) != int(meta["rows"]):
        raise OSError(f"table cache {folder} is damaged ({len(rows)} rows, expected {meta['rows']}); delete it")
    return CachedTable(folder=folder, rows=rows, dropped={k: int(v) for k, v in meta["dropped"].items()}, built=built)
