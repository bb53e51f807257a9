"""Property tests of the tile planner: every pixel exactly once, reads inside the scene, halo accounted for."""

from __future__ import annotations

import bisect
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hsi_engine.tiles import plan_tiles

SETTINGS = settings(max_examples=100, deadline=None)


@st.composite
def partitions(draw, n: int):
    """Dask-style chunk sizes of an axis of length ``n`` (uneven, at least one chunk)."""
    cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6, unique=True)) if n > 1 else []
    edges = [0, *sorted(c for c in cuts if 0 < c < n), n]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


@st.composite
def cases(draw):
    h = draw(st.integers(1, 90))
    w = draw(st.integers(1, 90))
    shape = draw(st.sampled_from(["square", "row", "col", "any"]))
    if shape == "row":  # 1 x N tiles
        tile = (1, draw(st.integers(1, 40)))
    elif shape == "col":
        tile = (draw(st.integers(1, 40)), 1)
    elif shape == "square":
        tile = draw(st.integers(1, 40))
    else:
        tile = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    halo = draw(st.integers(0, 7))
    kind = draw(st.sampled_from(["none", "regular", "uneven"]))
    if kind == "none":
        chunks = None
    elif kind == "regular":
        chunks = (draw(st.integers(1, 50)), draw(st.integers(1, 50)))
    else:
        chunks = (draw(partitions(h)), draw(partitions(w)))
    return h, w, tile, halo, chunks


@SETTINGS
@given(cases())
def test_every_pixel_exactly_once(case):
    h, w, tile, halo, chunks = case
    plan = plan_tiles(h, w, tile, halo, chunks=chunks)
    ty, tx = (tile, tile) if isinstance(tile, int) else tile
    count = np.zeros((h, w), np.int32)
    for t in plan:
        assert 0 <= t.y0 < t.y1 <= h and 0 <= t.x0 < t.x1 <= w
        assert t.y1 - t.y0 <= ty and t.x1 - t.x0 <= tx
        count[t.y0:t.y1, t.x0:t.x1] += 1
    assert (count == 1).all(), f"pixels covered {count.min()}..{count.max()} times"
    assert [t.index for t in plan] == list(range(len(plan)))
    assert len(plan) == -(-h // ty) * -(-w // tx)  # the last partial tiles included, nothing dropped


@SETTINGS
@given(cases())
def test_reads_stay_inside_the_scene_and_cover_tile_plus_halo(case):
    h, w, tile, halo, chunks = case
    plan = plan_tiles(h, w, tile, halo, chunks=chunks)
    for t in plan:
        ry0, ry1, rx0, rx1 = t.read
        top, bottom, left, right = t.pad
        assert 0 <= ry0 <= t.y0 and t.y1 <= ry1 <= h  # inside the real scene, around the tile
        assert 0 <= rx0 <= t.x0 and t.x1 <= rx1 <= w
        assert min(t.pad) >= 0 and max(t.pad) <= halo
        # read window + zero padding == the tile grown by the halo on every side (the padded-scene window)
        assert (ry0 - top, ry1 + bottom) == (t.y0 - halo, t.y1 + halo)
        assert (rx0 - left, rx1 + right) == (t.x0 - halo, t.x1 + halo)
        # padding only where the scene ends: the padded window lies inside the scene padded by the halo
        assert top == max(0, halo - t.y0) and bottom == max(0, t.y1 + halo - h)
        assert left == max(0, halo - t.x0) and right == max(0, t.x1 + halo - w)
        ph, pw = (ry1 - ry0) + top + bottom, (rx1 - rx0) + left + right
        mh, mw = plan.max_read_shape
        assert ph <= mh and pw <= mw


@SETTINGS
@given(cases())
def test_order_follows_chunk_rows(case):
    h, w, tile, halo, chunks = case
    plan = plan_tiles(h, w, tile, halo, chunks=chunks)
    if chunks is None:
        keys = [(t.y0, t.x0) for t in plan]  # row-major
    else:
        cy = chunks[0]
        starts = list(range(0, h, cy)) if isinstance(cy, int) else list(itertools.accumulate((0, *cy[:-1])))
        keys = [(bisect.bisect_right(starts, t.y0) - 1, t.x0, t.y0) for t in plan]
    assert keys == sorted(keys)
