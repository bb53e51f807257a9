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
        self.active = self.most_active = 0  # decodes running at once, and the most seen

    def __call__(self, y0, y1, x0, x1):
        with self.lock:
            self.calls.append((y0, y1, x0, x1))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay)
            if (y0, x0) in self.fail:
                raise OSError(f"chunk at {(y0, x0)} is corrupt")
            return self.cube[:, y0:y1, x0:x1].copy()
        finally:
            with self.lock:
                self.active -= 1


def _windows(n=200, seed=1):
    rng = np.random.default_rng(seed)
    h, w = sum(YCH), sum(XCH)
    for _ in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        yield int(y0), int(rng.integers(y0 + 1, h + 1)), int(x0), int(rng.integers(x0 + 1, w + 1))


def test_windows_equal_direct_slicing_and_each_block_is_decoded_once():
    src = Source()
    cache = BlockCache(src, (YCH, XCH), max_blocks=len(YCH) * len(XCH))
    for y0, y1, x0, x1 in _windows():
        np.testing.assert_array_equal(cache(y0, y1, x0, x1), src.cube[:, y0:y1, x0:x1])
    assert len(src.calls) == len(set(src.calls)) == cache.decoded <= len(YCH) * len(XCH)
    assert all(c in {(a, a + dy, b, b + dx) for a, dy in zip(np.cumsum((0,) + YCH), YCH)
                     for b, dx in zip(np.cumsum((0,) + XCH), XCH)} for c in src.calls)  # whole chunks only
    assert cache.hits > 100


def test_the_pool_is_fixed_and_bounds_what_is_kept():
    src = Source()
    cache = BlockCache(src, (YCH, XCH), max_blocks=2)
    for y0, y1, x0, x1 in _windows():  # one thread: never more than the pool, slots reused
        np.testing.assert_array_equal(cache(y0, y1, x0, x1), src.cube[:, y0:y1, x0:x1])
        assert len(cache._slots) <= 2 and cache.nbytes <= 2 * 3 * 7 * 9 * 2
    assert cache.decoded > len(YCH) * len(XCH)  # evicted blocks were decoded again


def test_pinned_slots_are_never_reused_under_a_reader():
    """Eight threads, a pool of 4 slots, windows of up to 12 blocks: every window is still exact (a slot being
    copied from is pinned; the pool grows past its size only while all slots are pinned, then stops)."""
    src = Source(delay=0.002)
    cache = BlockCache(src, (YCH, XCH), max_blocks=4)
    wins = list(_windows(160, seed=7))
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda w: cache(*w), wins))
    for (y0, y1, x0, x1), o in zip(wins, outs):
        np.testing.assert_array_equal(o, src.cube[:, y0:y1, x0:x1])
    assert all(p == 0 for p in cache._pins) and len(cache._slots) <= 8 * 2


def test_threads_share_one_decode_per_block():
    src = Source(delay=0.05)
    cache = BlockCache(src, (YCH, XCH), max_blocks=len(YCH) * len(XCH))
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda _: cache(0, sum(YCH), 0, sum(XCH)), range(16)))
    for o in outs:
        np.testing.assert_array_equal(o, src.cube)
    assert len(src.calls) == len(set(src.calls)) == len(YCH) * len(XCH)


def test_a_failed_decode_reaches_every_waiter_and_is_retried():
    src = Source(delay=0.2, fail={(5, 6)})
    cache = BlockCache(src, (YCH, XCH), max_blocks=len(YCH) * len(XCH))
    with ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(cache, 5, 12, 6, 12) for _ in range(4)]
        for f in futs:
            with pytest.raises(OSError, match=r"chunk at \(5, 6\) is corrupt"):
                f.result()
    assert src.calls == [(5, 12, 6, 12)]  # one decode; the three waiters got its error
    assert not cache._inflight and not any(cache._pins)
    src.fail.clear()
    np.testing.assert_array_equal(cache(5, 12, 6, 12), src.cube[:, 5:12, 6:12])


def test_a_window_s_blocks_are_decoded_concurrently_with_a_decoder_pool():
    """One reader, one window over all 12 blocks: with four decoders several decodes run at once (without a
    pool, one at a time); the window is exact, each block decoded once, and nothing stays pinned."""
    for pool, expect in ((None, 1), (ThreadPoolExecutor(4), 2)):
        src = Source(delay=0.05)
        cache = BlockCache(src, (YCH, XCH), max_blocks=len(YCH) * len(XCH), decoders=pool)
        np.testing.assert_array_equal(cache(0, sum(YCH), 0, sum(XCH)), src.cube)
        assert len(src.calls) == len(set(src.calls)) == cache.decoded == len(YCH) * len(XCH)
        assert (src.most_active == 1) if pool is None else (src.most_active >= expect)
        assert not any(cache._pins) and not cache._inflight
        np.testing.assert_array_equal(cache(2, 20, 3, 19), src.cube[:, 2:20, 3:19])  # all hits now
        assert cache.decoded == len(YCH) * len(XCH) and cache.hits >= 9
        if pool is not None:
            pool.shutdown()


def test_concurrent_decoding_under_many_readers_and_a_small_pool_stays_exact():
    """Eight readers, four decoders, 4 slots for windows of up to 12 blocks (so slots are evicted under
    readers): every window exact, no pin or in-flight mark left behind, and the pool grows past its 4 slots
    to at most one per reader and decoder (slots are pinned only while filled or copied from)."""
    src = Source(delay=0.002)
    with ThreadPoolExecutor(4) as pool:
        cache = BlockCache(src, (YCH, XCH), max_blocks=4, decoders=pool)
        wins = list(_windows(160, seed=11))
        with ThreadPoolExecutor(8) as ex:
            outs = list(ex.map(lambda w: cache(*w), wins))
    for (y0, y1, x0, x1), o in zip(wins, outs):
        np.testing.assert_array_equal(o, src.cube[:, y0:y1, x0:x1])
    assert not any(cache._pins) and not cache._inflight and cache.decoded > len(YCH) * len(XCH)
    assert len(cache._slots) <= 8 + 4


@pytest.mark.parametrize("bad", [(0, 0), (5, 6)], ids=["decoded-by-the-reader", "decoded-on-the-pool"])
def test_a_failed_block_among_concurrent_decodes_raises_and_releases_the_others(bad):
    """A window over four blocks, one of them corrupt, decoded on a pool (the reader decodes one of them
    itself): the reader gets the corrupt chunk's error, once; the three good blocks land in the pool (not
    pinned, not decoded again); the bad one is retried by the next read."""
    src = Source(delay=0.02, fail={bad})
    with ThreadPoolExecutor(3) as pool:
        cache = BlockCache(src, (YCH, XCH), max_blocks=len(YCH) * len(XCH), decoders=pool)
        with pytest.raises(OSError, match=rf"chunk at \({bad[0]}, {bad[1]}\) is corrupt"):
            cache(0, 12, 0, 12)
        deadline = time.monotonic() + 30
        while cache._inflight and time.monotonic() < deadline:  # the good blocks may still be decoding
            time.sleep(0.01)
        assert not any(cache._pins) and not cache._inflight and cache.decoded == 3
        src.fail.clear()
        np.testing.assert_array_equal(cache(0, 12, 0, 12), src.cube[:, :12, :12])
    assert [c[::2] for c in src.calls].count(bad) == 2 and len(src.calls) == 5


def test_a_pool_that_refuses_jobs_leaves_no_block_in_flight():
    """A decoder pool already shut down: the read fails with the pool's error and abandons its claims, so a
    later reader (here the same cache without the pool) decodes those blocks instead of waiting for ever."""
    src = Source()
    pool = ThreadPoolExecutor(2)
    pool.shutdown()
    cache = BlockCache(src, (YCH, XCH), max_blocks=len(YCH) * len(XCH), decoders=pool)
    with pytest.raises(RuntimeError, match="shutdown"):
        cache(0, 12, 0, 12)
    assert not cache._inflight and not any(cache._pins)
    cache._decoders = None
    with ThreadPoolExecutor(1) as ex:
        np.testing.assert_array_equal(ex.submit(cache, 0, 12, 0, 12).result(timeout=30), src.cube[:, :12, :12])


def test_readers_on_the_decoder_pool_itself_do_not_deadlock():
    """The cache called from the very pool it decodes on (two threads, windows of up to 12 blocks): a reader
    decodes its own queued jobs instead of waiting for a pool whose threads are all readers."""
    src = Source(delay=0.001)
    with ThreadPoolExecutor(2) as pool:
        cache = BlockCache(src, (YCH, XCH), max_blocks=6, decoders=pool)
        wins = list(_windows(40, seed=5))
        futs = [pool.submit(cache, *w) for w in wins]
        outs = [f.result(timeout=60) for f in futs]
    for (y0, y1, x0, x1), o in zip(wins, outs):
        np.testing.assert_array_equal(o, src.cube[:, y0:y1, x0:x1])
    assert not any(cache._pins) and not cache._inflight


def test_a_block_that_cannot_be_copied_in_does_not_lose_its_slot():
    """A decode of the wrong band count fails while being copied into a slot taken from the pool: the
    reader gets the error and the slot is reused by the next decode (it used to be lost, and a full pool
    then had no slot to give)."""
    src = Source()
    cache = BlockCache(src, (YCH, XCH), max_blocks=1)
    np.testing.assert_array_equal(cache(0, 5, 0, 6), src.cube[:, :5, :6])
    good = src.cube
    src.cube = np.concatenate([good, good[:1]])  # 4 bands where the slots hold 3
    with pytest.raises(ValueError):
        cache(5, 12, 0, 6)
    src.cube = good
    assert cache._spare == [0] and not any(cache._pins)
    np.testing.assert_array_equal(cache(5, 12, 6, 12), good[:, 5:12, 6:12])
    assert len(cache._slots) == 1 and not cache._spare


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
    # the CPU default (off), a budget, a budget with decoder threads (the CUDA default)
    for cache_blocks, decoders in ((None, None), (9, None), (9, 3)):
        sink = ArraySink(30, 41, CLASSES, probabilities=True)
        stats = run_plan(scene, plan, engine, sink, mean=cube.mean(axis=(1, 2), dtype=np.float64),
                         std=cube.std(axis=(1, 2), dtype=np.float64), progress=False, probabilities=True,
                         cache_blocks=cache_blocks, decoders=decoders)
        maps.append(sink)
        assert ("blocks_decoded" in stats) == (cache_blocks is not None)
        assert stats["decoders"] == (decoders or 0)  # the pool was built and handed to the cache
        if cache_blocks:
            assert 16 <= stats["blocks_decoded"] <= 3 * 16  # the 4 x 4 chunks, each at most 3 times, 6 x 9 tiles
    for m in maps[1:]:
        np.testing.assert_array_equal(maps[0].labels, m.labels)
        assert np.array_equal(maps[0].probabilities.view(np.uint32), m.probabilities.view(np.uint32))
    assert len(np.unique(maps[0].labels)) > 1
    with pytest.raises(ValueError, match="decoders must be >= 0"):
        run_plan(scene, plan, engine, ArraySink(30, 41, CLASSES), progress=False, decoders=-1)


def test_decoders_without_the_block_cache_say_so(tmp_path, caplog):
    """Decoder threads decode the cache's chunks: asked for without a cache (the CPU default) they would sit
    idle, so the run says how to use them, builds no pool, and gives the same map."""
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.runner import ArraySink, run_plan
    from hsi_engine.tiles import plan_tiles

    from test_runner import CLASSES, _cube, _model

    cube = _cube(np.float32, h=12, w=14)
    engine = FusedSSRN(_model(), backend="eager")
    plan = plan_tiles(12, 14, 6, 3)
    with caplog.at_level("WARNING", logger="hsi_engine.runner"):
        stats = run_plan(cube, plan, engine, ArraySink(12, 14, CLASSES), progress=False, decoders=4)
    assert stats["decoders"] == 0
    assert "decoders=4 (--decoders) has no effect here" in caplog.text and "cache_blocks=N" in caplog.text
    assert "the scene is not chunked" in caplog.text  # an in-memory array: no chunks to cache
    caplog.clear()
    import dask.array as dsa

    with caplog.at_level("WARNING", logger="hsi_engine.runner"):
        stats = run_plan(dsa.from_array(cube, chunks=(-1, 6, 7)), plan, engine, ArraySink(12, 14, CLASSES),
                         progress=False, decoders=4, cache_blocks=0)
    assert stats["decoders"] == 0 and "decoders=4 (--decoders) has no effect here" in caplog.text
    assert "(cache_blocks=0)" in caplog.text and "not chunked" not in caplog.text


def test_default_budget_decodes_each_block_about_three_times_on_a_long_plan():
    """A 72 x 64 scene of 8 x 8 chunks (72 blocks) read tile by tile in plan order with the runner's default
    budget (9 blocks here, far fewer than the scene's): each block is decoded at most 3 times (halo of the row
    above, own row, halo of the row below), where direct window reads decode 9 per tile."""
    from hsi_engine.runner import cache_blocks_for
    from hsi_engine.tiles import plan_tiles

    ych, xch = (8,) * 9, (8,) * 8
    src = Source()
    src.cube = np.random.default_rng(3).integers(0, 9, size=(2, 72, 64)).astype(np.uint8)
    n = cache_blocks_for((8, 8), 3, 1)(8, 8)
    cache = BlockCache(src, (ych, xch), max_blocks=n)
    plan = plan_tiles(72, 64, 8, 3, chunks=(ych, xch))
    for t in plan:
        ry0, ry1, rx0, rx1 = t.read
        np.testing.assert_array_equal(cache(ry0, ry1, rx0, rx1), src.cube[:, ry0:ry1, rx0:rx1])
    counts = np.bincount([(y0 // 8) * 8 + x0 // 8 for y0, _, x0, _ in src.calls], minlength=72)
    assert n == 9 and counts.max() <= 3 and counts.min() >= 1
    assert len(src.calls) <= 3 * 72 < 0.5 * sum(len(cache._span(cache._ys, *t.read[:2])) *
                                                len(cache._span(cache._xs, *t.read[2:])) for t in plan)


@pytest.mark.parametrize("readers", [1, 4])
def test_a_decoder_pool_does_not_add_decodes_at_the_default_budget(readers):
    """The long plan above, read by 1 or 4 readers with and without a pool of 16 decoders, at the runner's
    default budget: the pool may decode a window's blocks at once, but must not evict blocks the window is
    about to read (it did: +27 % decodes with one reader, +50 % with four)."""
    from hsi_engine.runner import cache_blocks_for
    from hsi_engine.tiles import plan_tiles

    ych, xch = (8,) * 9, (8,) * 8
    plan = plan_tiles(72, 64, 8, 3, chunks=(ych, xch))
    decoded = []
    for pool in (None, ThreadPoolExecutor(16)):
        src = Source(delay=0.001)
        src.cube = np.random.default_rng(3).integers(0, 9, size=(2, 72, 64)).astype(np.uint8)
        cache = BlockCache(src, (ych, xch), max_blocks=cache_blocks_for((8, 8), 3, readers)(8, 8), decoders=pool)
        with ThreadPoolExecutor(readers) as ex:
            outs = list(ex.map(lambda t: cache(*t.read), plan.tiles))
        for t, o in zip(plan.tiles, outs):
            np.testing.assert_array_equal(o, src.cube[:, t.read[0]:t.read[1], t.read[2]:t.read[3]])
        decoded.append(cache.decoded)
        if pool is not None:
            pool.shutdown()
    no_pool, with_pool = decoded
    assert with_pool <= (no_pool if readers == 1 else 1.15 * no_pool), decoded


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_cache_setting_reaches_the_runner_from_classify_to_file(tmp_path, suffix):
    """Both output paths pass reader settings on (the zarr path used to drop them): a bad one is refused,
    and nothing is left on disk."""
    from hsi_engine.api import classify, classify_to_file

    from test_runner import _cube, _model

    import xarray as xr

    from hsi_engine.api import open_scene

    out = tmp_path / "out" / f"map{suffix}"
    out.parent.mkdir()
    with pytest.raises(ValueError, match="cache_blocks must be >= 0"):
        classify_to_file(_cube(np.float32), _model(), out, cache_blocks=-1, progress=False)
    assert list(out.parent.iterdir()) == []
    with pytest.raises(ValueError, match="decoders must be >= 0"):
        classify_to_file(_cube(np.float32), _model(), out, decoders=-1, progress=False)
    assert list(out.parent.iterdir()) == []
    xr.DataArray(_cube(np.float32), dims=("band", "y", "x"), name="r").chunk({"band": -1, "y": 8, "x": 8}).to_zarr(
        tmp_path / "s.zarr")
    scene = open_scene(tmp_path / "s.zarr")  # chunked: the cache is really built (2 blocks: fewer than needed)
    classify_to_file(scene, _model(), out, cache_blocks=2, readers=1, decoders=2, tile=8, progress=False)
    ref = classify(scene, _model(), cache_blocks=0, tile=8, progress=False)
    from _scale_fixtures import read_classes

    np.testing.assert_array_equal(read_classes(out), ref.values)


def test_cli_takes_reader_settings_and_refuses_bad_ones(tmp_path, capsys):
    import xarray as xr

    from hsi_engine.cli import main
    from ssrn.checkpoint import save_model

    from test_runner import _cube, _model

    cube = _cube(np.float32, h=20, w=26)
    xr.DataArray(cube, dims=("band", "y", "x"), name="r").chunk({"band": -1, "y": 8, "x": 8}).to_zarr(
        tmp_path / "s.zarr")
    model = _model(stats=True)
    save_model(model, tmp_path / "model")
    base = ["classify", str(tmp_path / "s.zarr"), "--model", str(tmp_path / "model"), "--tile", "8"]
    for flag, value in (("--cache-blocks", "-1"), ("--readers", "0"), ("--decoders", "-1")):
        with pytest.raises(SystemExit) as e:
            main(base + ["--out", str(tmp_path / "bad.tif"), flag, value])
        assert e.value.code == 2 and f"{flag}: expected an integer >=" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "a.tif"), "--cache-blocks", "9", "--readers", "1",
                        "--decoders", "2"]) == 0
    assert main(base + ["--out", str(tmp_path / "b.tif")]) == 0
    import rasterio

    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert not (tmp_path / "bad.tif").exists()


def test_block_cache_refuses_a_short_block():
    from hsi_engine.blocks import BlockCache
    full = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    # a store that returns one row for a 4-row chunk: must raise, not broadcast the row into the chunk
    cache = BlockCache(lambda y0, y1, x0, x1: full[:, y0:y0 + 1, x0:x1], ((4, 4), (4, 4)), 4)
    with pytest.raises(ValueError, match="decoded to"):
        cache(0, 4, 0, 4)
