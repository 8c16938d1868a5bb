"""The decode-once image cache: reused when unchanged, rebuilt on any change, safe under concurrent builds."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from noharm.datasets import DATASETS, get_dataset
from noharm.datasets.image_cache import cache_folder, default_cache_dir, load_or_build
from noharm.datasets.image_files import decode_image
from tests import real_layouts as R

SIZE = 16


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = [tmp_path / "src" / f"{i:03d}.jpg" for i in range(24)]
    for p in paths:
        R.save_image(p, rng, size=(20, 18))
    return paths


class CountingDecoder:
    """decode_image that counts its calls (thread-safe) and can be slowed down."""

    def __init__(self, size=SIZE, delay=0.0):
        self.size, self.delay, self.calls = size, delay, 0
        self._lock = threading.Lock()

    def __call__(self, path):
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return decode_image(path, self.size)


def build(paths, cache, decoder=None, size=SIZE, workers=2):
    decoder = decoder or CountingDecoder(size)
    return load_or_build(paths, decoder, (3, size, size), {"size": size}, cache_dir=cache, name="t",
                         workers=workers, progress=False), decoder


def test_unchanged_sources_reuse_the_cache_without_decoding(images, tmp_path):
    first, dec1 = build(images, tmp_path / "c")
    assert first.built and dec1.calls == 24 and first.x.shape == (24, 3, SIZE, SIZE)
    mtime = (first.folder / "images.npy").stat().st_mtime_ns
    again, dec2 = build(images, tmp_path / "c")
    assert not again.built and dec2.calls == 0 and again.folder == first.folder
    assert (again.folder / "images.npy").stat().st_mtime_ns == mtime
    assert np.array_equal(again.x, first.x)
    # Rows are the sources in order, decoded exactly as a direct decode would.
    assert np.array_equal(first.x[7], decode_image(images[7], SIZE))
    # Copy-on-write memory map: a consumer writing into x cannot corrupt the cache.
    assert isinstance(again.x, np.memmap)
    again.x[0] = 0
    assert np.array_equal(np.load(again.folder / "images.npy")[0], first.x[0]) and first.x[0].any()


def test_a_changed_source_or_setting_rebuilds(images, tmp_path):
    first, _ = build(images, tmp_path / "c")
    R.save_image(images[3], np.random.default_rng(9), size=(20, 18))  # new content, size and mtime
    changed, dec = build(images, tmp_path / "c")
    assert changed.built and dec.calls == 24 and changed.folder != first.folder
    assert not np.array_equal(changed.x[3], first.x[3]) and np.array_equal(changed.x[4], first.x[4])
    bigger, _ = build(images, tmp_path / "c", size=20)
    assert bigger.built and bigger.x.shape == (24, 3, 20, 20)
    fewer, _ = build(images[:10], tmp_path / "c")
    assert fewer.built and len(fewer.x) == 10


def test_touching_a_file_rebuilds_and_a_dataset_reuses_its_cache(tmp_path):
    root = tmp_path / "celeba"
    R.write_celeba(root)
    ds = get_dataset("celeba", root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "c"))
    ds.load(0)
    assert ds.cache_built
    first = ds.cache_folder
    ds.load(1)
    assert not ds.cache_built and ds.cache_folder == first
    other = get_dataset("celeba", root=str(root), image_size=SIZE, cache_dir=str(tmp_path / "c"), target="Wavy_Hair")
    other.load(0)
    assert not other.cache_built  # another target, the same pixels
    st = (root / "img_align_celeba" / "000004.jpg").stat()
    os.utime(root / "img_align_celeba" / "000004.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds.load(0)
    assert ds.cache_built and ds.cache_folder != first


def test_bad_sources_are_recorded_and_the_array_holds_only_good_rows(images, tmp_path):
    images[2].unlink()
    R.corrupt(images[5])
    cached, _ = build(images, tmp_path / "c")
    assert cached.ok.sum() == 22 and not cached.ok[2] and not cached.ok[5]
    assert [(Path(p).name, why.split(":")[0]) for p, why in cached.problems] == [("002.jpg", "missing"), ("005.jpg", "unreadable")]
    assert cached.x.shape[0] == 22
    assert np.array_equal(cached.x[2], decode_image(images[3], SIZE))  # compacted: row 2 is source 3
    reopened, dec = build(images, tmp_path / "c")
    assert not reopened.built and dec.calls == 0 and reopened.problems == cached.problems


def test_an_interrupted_build_leaves_nothing_that_looks_complete(images, tmp_path):
    class Interrupting(CountingDecoder):
        def __call__(self, path):
            if self.calls >= 5:
                raise KeyboardInterrupt
            return super().__call__(path)

    with pytest.raises(KeyboardInterrupt):
        build(images, tmp_path / "c", Interrupting(), workers=1)
    leftovers = [p.name for p in (tmp_path / "c" / "t").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    # A partial folder left by a killed process is removed by the next build of that key.
    folder = cache_folder([str(p) for p in images], (3, SIZE, SIZE), {"size": SIZE}, tmp_path / "c", "t")
    stale = folder.parent / f".{folder.name}.partial-killed"
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"half")
    cached, dec = build(images, tmp_path / "c")
    assert cached.built and dec.calls == 24 and cached.folder == folder and not stale.exists()


def _build_in_child(paths, cache, barrier, results):
    """Run in a separate process: start together with the sibling, build the same cache, report."""
    barrier.wait(timeout=60)
    cached, dec = build([Path(p) for p in paths], cache, CountingDecoder(delay=0.02), workers=1)
    results.put((cached.built, dec.calls, str(cached.folder), int(cached.x.sum())))


def test_two_processes_building_the_same_cache_produce_one_valid_cache(images, tmp_path):
    # fork keeps the children cheap (no re-import of torch); spawn where fork does not exist.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = ([str(p) for p in images], str(tmp_path / "c"), barrier, results)
    children = [ctx.Process(target=_build_in_child, args=args) for _ in range(2)]
    for c in children:
        c.start()
    out = [results.get(timeout=120) for _ in children]
    for c in children:
        c.join(timeout=60)
        assert c.exitcode == 0
    assert sorted(r[0] for r in out) == [False, True]  # one built it, the other waited on the lock and reused it
    assert sum(r[1] for r in out) == 24  # every image decoded exactly once
    assert out[0][2] == out[1][2] and out[0][3] == out[1][3]
    reopened, dec = build(images, tmp_path / "c")
    assert not reopened.built and dec.calls == 0
    expected = np.stack([decode_image(p, SIZE) for p in images])
    assert np.array_equal(reopened.x, expected)
    assert [p.name for p in reopened.folder.parent.iterdir() if "partial" in p.name] == []


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NOHARM_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("NOHARM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "noharm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "noharm"
    ds = DATASETS.get("utkface")(root=str(tmp_path))  # get_dataset would look for the files
    assert ds.cache_dir == Path.home() / ".cache" / "noharm"
