"""The decoded-block cache: windows equal direct slicing, each block decoded once while cached, a bounded
budget, one decode per block across threads, errors not cached; and the engine reading a real zarr store
through it gives the map it gives without it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hsi_engine.blocks import BlockCache

YCH, XCH = (5, 7, 7, 4), (6, 6, 9)  # uneven chunks, as dask gives for a store's last partial chunk


class Source:
    def __init__(self, delay: float = 0.0, fail: set | None = None) -> None:
        self.cube = np.random.default_rng(0).integers(0, 60000, size=(3, sum(YCH), sum(XCH))).astype(np.uint16)
        self.calls: list[tuple[int, int, int, int]] = []
        self.delay, self.fail = delay, fail or set()
        self.lock = threading.Lock()

    def __call__(self, y0, y1, x0, x1):
        with self.lock:
            self.calls.append((y0, y1, x0, x1))
        if (y0, x0) in self.fail:
            raise OSError(f"chunk at {(y0, x0)} is corrupt")
        time.sleep(self.delay)
        return self.cube[:, y0:y1, x0:x1].copy()


def _windows(n=200, seed=1):
    rng = np.random.default_rng(seed)
    h, w = sum(YCH), sum(XCH)
    for _ in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        yield int(y0), int(rng.integers(y0 + 1, h + 1)), int(x0), int(rng.integers(x0 + 1, w + 1))


def test_windows_equal_direct_slicing_and_each_block_is_decoded_once():
    src = Source()
    cache = BlockCache(src, (YCH, XCH), max_bytes=1 << 30)
    for y0, y1, x0, x1 in _windows():
        np.testing.assert_array_equal(cache(y0, y1, x0, x1), src.cube[:, y0:y1, x0:x1])
    assert len(src.calls) == len(set(src.calls)) == cache.decoded <= len(YCH) * len(XCH)
    assert all(c in {(a, a + dy, b, b + dx) for a, dy in zip(np.cumsum((0,) + YCH), YCH)
                     for b, dx in zip(np.cumsum((0,) + XCH), XCH)} for c in src.calls)  # whole chunks only
    assert cache.hits > 100


def test_budget_bounds_what_is_kept():
    src = Source()
    block = 3 * 7 * 9 * 2  # the largest block's bytes
    cache = BlockCache(src, (YCH, XCH), max_bytes=2 * block)
    for y0, y1, x0, x1 in _windows():
        np.testing.assert_array_equal(cache(y0, y1, x0, x1), src.cube[:, y0:y1, x0:x1])
        assert cache._bytes <= 2 * block and len(cache._blocks) <= 2 * len(XCH)
    assert cache.decoded > len(YCH) * len(XCH)  # evicted blocks were decoded again


def test_threads_share_one_decode_per_block():
    src = Source(delay=0.05)
    cache = BlockCache(src, (YCH, XCH), max_bytes=1 << 30)
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda _: cache(0, sum(YCH), 0, sum(XCH)), range(16)))
    for o in outs:
        np.testing.assert_array_equal(o, src.cube)
    assert len(src.calls) == len(set(src.calls)) == len(YCH) * len(XCH)


def test_a_failed_decode_reaches_every_waiter_and_is_retried():
    src = Source(delay=0.05, fail={(5, 6)})
    cache = BlockCache(src, (YCH, XCH), max_bytes=1 << 30)
    with ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(cache, 5, 12, 6, 12) for _ in range(4)]
        for f in futs:
            with pytest.raises(OSError, match=r"chunk at \(5, 6\) is corrupt"):
                f.result()
    src.fail.clear()
    np.testing.assert_array_equal(cache(5, 12, 6, 12), src.cube[:, 5:12, 6:12])


def test_engine_map_from_zarr_is_the_same_with_and_without_the_cache(tmp_path):
    import xarray as xr

    from hsi_engine.api import open_scene
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.runner import ArraySink, run_plan
    from hsi_engine.tiles import plan_tiles

    from test_runner import CLASSES, _cube, _model

    model = _model()
    cube = _cube(np.float32, h=30, w=41)
    xr.DataArray(cube, dims=("band", "y", "x"), name="r").chunk({"band": 4, "y": 8, "x": 11}).to_zarr(
        tmp_path / "s.zarr")
    scene = open_scene(tmp_path / "s.zarr")
    engine = FusedSSRN(model, backend="eager")
    plan = plan_tiles(30, 41, 5, 3, chunks=(scene.chunks[1], scene.chunks[2]))
    maps = []
    for cache_bytes in (0, 1 << 20):
        sink = ArraySink(30, 41, CLASSES, probabilities=True)
        stats = run_plan(scene, plan, engine, sink, mean=cube.mean(axis=(1, 2), dtype=np.float64),
                         std=cube.std(axis=(1, 2), dtype=np.float64), progress=False, probabilities=True,
                         cache_bytes=cache_bytes)
        maps.append(sink)
        assert ("blocks_decoded" in stats) == bool(cache_bytes)
    assert stats["blocks_decoded"] == 4 * 4  # every chunk of the 30 x 41 scene once, for 9 x 9 tiles
    np.testing.assert_array_equal(maps[0].labels, maps[1].labels)
    assert np.array_equal(maps[0].probabilities.view(np.uint32), maps[1].probabilities.view(np.uint32))
    assert len(np.unique(maps[0].labels)) > 1
