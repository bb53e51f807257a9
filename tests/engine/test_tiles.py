"""Tile plan: every pixel exactly once, reads clipped to the scene with in-memory padding, chunk order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hsi_engine.tiles import make_tile, normalise_tile, plan_tiles

CASES = [  # (height, width, tile, halo, chunks)
    (40, 37, 16, 3, None),
    (40, 37, (1, 37), 3, None),
    (40, 37, (1, 5), 3, ((16, 16, 8), (37,))),
    (13, 11, 2, 3, None),  # tile smaller than the halo
    (7, 7, 64, 3, None),  # one tile bigger than the scene
    (145, 145, 64, 5, ((50, 50, 45), (70, 75))),  # chunks that do not align with tiles
    (9, 200, (4, 7), 1, (4, 16)),
    (1, 1, 1, 0, None),
]


@pytest.mark.parametrize("height,width,tile,halo,chunks", CASES)
def test_every_pixel_exactly_once_and_reads_are_padded_windows(height, width, tile, halo, chunks):
    plan = plan_tiles(height, width, tile, halo, chunks=(chunks[0], chunks[1]) if isinstance(chunks, tuple)
                      else (chunks, chunks) if chunks else None)
    count = np.zeros((height, width), int)
    ty, tx = normalise_tile(tile)
    for t in plan:
        count[t.y0:t.y1, t.x0:t.x1] += 1
        h, w = t.shape
        assert 1 <= h <= ty and 1 <= w <= tx
        ry0, ry1, rx0, rx1 = t.read
        assert 0 <= ry0 < ry1 <= height and 0 <= rx0 < rx1 <= width
        top, bottom, left, right = t.pad
        assert min(t.pad) >= 0 and max(t.pad) <= halo
        # the padded read block is exactly the tile grown by the halo
        assert (ry1 - ry0 + top + bottom, rx1 - rx0 + left + right) == (h + 2 * halo, w + 2 * halo)
        assert ry0 - top == t.y0 - halo and rx0 - left == t.x0 - halo
        # padding only where the halo leaves the scene
        assert top == max(0, halo - t.y0) and bottom == max(0, t.y1 + halo - height)
    assert (count == 1).all(), "a pixel was skipped or classified twice"
    assert [t.index for t in plan] == list(range(len(plan)))
    assert max(t.shape for t in plan) <= (ty, tx)
    assert plan.max_read_shape == (ty + 2 * halo, tx + 2 * halo)


def test_last_partial_tiles_included():
    plan = plan_tiles(10, 10, 4, 3)
    assert sorted({(t.y0, t.y1) for t in plan}) == [(0, 4), (4, 8), (8, 10)]
    assert len(plan) == 9


def test_order_follows_store_chunks():
    # chunk rows of 8: tiles 4x4 inside one chunk row are visited column by column before the next chunk row
    plan = plan_tiles(16, 12, 4, 2, chunks=(8, 6))
    order = [(t.y0, t.x0) for t in plan]
    assert order[:6] == [(0, 0), (4, 0), (0, 4), (4, 4), (0, 8), (4, 8)]
    assert all(y >= 8 for y, _ in order[6:])
    chunk_row = [t.y0 // 8 for t in plan]
    assert chunk_row == sorted(chunk_row)
    # without chunk information: row-major
    assert [(t.y0, t.x0) for t in plan_tiles(8, 8, 4, 1)] == [(0, 0), (0, 4), (4, 0), (4, 4)]


def test_plan_is_a_pure_function():
    a = plan_tiles(33, 20, (5, 7), 3, chunks=((10, 10, 13), None))
    b = plan_tiles(33, 20, (5, 7), 3, chunks=((10, 10, 13), None))
    assert a == b


def test_random_plans_cover_exactly_once():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        tile = (int(rng.integers(1, 20)), int(rng.integers(1, 20)))
        halo = int(rng.integers(0, 6))
        cy = int(rng.integers(1, 30))
        plan = plan_tiles(h, w, tile, halo, chunks=(cy, None))
        cover = np.zeros((h, w), int)
        for t in plan:
            cover[t.y0:t.y1, t.x0:t.x1] += 1
        assert (cover == 1).all()


def test_make_tile_interior_has_no_padding():
    t = make_tile(0, 10, 20, 10, 20, 100, 100, 3)
    assert t.read == (7, 23, 7, 23) and t.pad == (0, 0, 0, 0)


@pytest.mark.parametrize("bad", [0, (0, 4), (3, -1)])
def test_bad_tile_rejected(bad):
    with pytest.raises(ValueError, match="tile sides"):
        plan_tiles(10, 10, bad, 3)


def test_bad_chunks_rejected():
    with pytest.raises(ValueError, match="add up"):
        plan_tiles(10, 10, 4, 3, chunks=((3, 3), None))


def test_tile_count_matches_ceil_division():
    for h, w, t in itertools.product([1, 7, 64, 65], [1, 9, 128], [1, 8, 64]):
        assert len(plan_tiles(h, w, t, 3)) == -(-h // t) * -(-w // t)


@pytest.mark.parametrize("tile", ["128", 2.5, (16,), (8, 8, 8), True, None])
def test_a_tile_that_is_not_a_whole_number_or_a_pair_is_named(tile):
    with pytest.raises(ValueError, match=r"tile=.*expected a whole number of pixels T .* or a pair"):
        normalise_tile(tile)
