"""Tile plan: output tiles that cover every pixel exactly once, each read with a halo of ``patch // 2``.

A tile's read window is clipped to the real scene; the part of the halo that falls outside the scene is
zero padding added in memory AFTER normalisation, exactly as training pads the normalised scene. Tiles
are ordered to follow the store's chunks: row-major over chunk rows, and within one chunk row column by
column, so a chunk is decoded while the tiles that need it are read. Pure functions over plain
dataclasses; no I/O.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ssrn.errors import is_whole

from .errors import OptionError, SceneTooSmallError


@dataclass(frozen=True)
class Tile:
    """One output tile ``[y0:y1, x0:x1]`` and where to read it from.

    ``read``: the window ``(ry0, ry1, rx0, rx1)`` of the real scene to read (the tile grown by the halo and
    clipped to the scene). ``pad``: ``(top, bottom, left, right)`` zero rows/columns to add around the read
    block so it becomes ``(y1 - y0 + 2*halo) x (x1 - x0 + 2*halo)``.
    """

    index: int
    y0: int
    y1: int
    x0: int
    x1: int
    read: tuple[int, int, int, int]
    pad: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


@dataclass(frozen=True)
class TilePlan:
    """All tiles of a ``height x width`` scene, in reading order."""

    height: int
    width: int
    tile: tuple[int, int]
    halo: int
    tiles: tuple[Tile, ...]

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def max_read_shape(self) -> tuple[int, int]:
        """The largest padded tile, ``(ty + 2*halo, tx + 2*halo)``: what one tile buffer must hold."""
        return self.tile[0] + 2 * self.halo, self.tile[1] + 2 * self.halo


def normalise_tile(tile: int | Sequence[int]) -> tuple[int, int]:
    """``T`` or ``(ty, tx)`` -> ``(ty, tx)``, both positive whole numbers of pixels."""
    sides = (tile,) * 2 if is_whole(tile) else tile
    if isinstance(sides, (str, bytes)) or not isinstance(sides, Sequence) or len(sides) != 2 \
            or not all(is_whole(v) for v in sides):
        raise OptionError(f"tile={tile!r}; expected a whole number of pixels T (e.g. tile=128) or a pair (ty, tx)")
    ty, tx = (int(v) for v in sides)
    if ty < 1 or tx < 1:
        raise OptionError(f"tile sides must be >= 1 pixel, got {(ty, tx)}")
    return ty, tx


def _edges(n: int, step: int) -> list[tuple[int, int]]:
    """``[(0, step), (step, 2*step), ..., (k*step, n)]``: the last partial range included."""
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _chunk_starts(chunks: int | Sequence[int] | None, n: int) -> list[int] | None:
    """Start offsets of the store's chunks along one axis (dask style sizes, or one regular size)."""
    if chunks is None:
        return None
    if is_whole(chunks):
        chunks = int(chunks)
        if chunks < 1:
            raise OptionError(f"chunk size must be >= 1, got {chunks}")
        return list(range(0, n, chunks))
    sizes = [int(c) for c in chunks]
    if sum(sizes) != n or any(c < 1 for c in sizes):
        raise OptionError(f"chunk sizes {sizes} do not add up to the axis length {n}")
    return list(itertools.accumulate([0] + sizes[:-1]))


def make_tile(index: int, y0: int, y1: int, x0: int, x1: int, height: int, width: int, halo: int) -> Tile:
    """The tile ``[y0:y1, x0:x1]`` with its clipped read window and in-memory zero padding."""
    ry0, ry1 = max(0, y0 - halo), min(height, y1 + halo)
    rx0, rx1 = max(0, x0 - halo), min(width, x1 + halo)
    pad = (ry0 - (y0 - halo), (y1 + halo) - ry1, rx0 - (x0 - halo), (x1 + halo) - rx1)
    return Tile(index, y0, y1, x0, x1, (ry0, ry1, rx0, rx1), pad)


def plan_tiles(height: int, width: int, tile: int | Sequence[int], halo: int, *,
               chunks: tuple[int | Sequence[int] | None, int | Sequence[int] | None] | None = None) -> TilePlan:
    """Tiles of ``tile`` (``T`` or ``(ty, tx)``) covering ``height x width``, each pixel exactly once.

    ``chunks``: the store's ``(y_chunks, x_chunks)`` (dask-style sizes per axis, or one size); the plan then
    walks chunk rows top to bottom and, inside a chunk row, tiles column by column. Without chunks it is
    row-major.
    """
    for name, v in (("height", height), ("width", width), ("halo", halo)):
        if not is_whole(v):
            raise OptionError(f"{name} must be a whole number of pixels; got {type(v).__name__} {v!r}")
    height, width, halo = int(height), int(width), int(halo)
    if height < 1 or width < 1:
        raise SceneTooSmallError(f"scene must have at least one pixel, got {height} x {width}")
    if halo < 0:
        raise OptionError(f"halo must be >= 0, got {halo}")
    if chunks is not None and (isinstance(chunks, (str, bytes)) or not isinstance(chunks, Sequence)
                               or len(chunks) != 2):
        raise OptionError(f"chunks must be a (y_chunks, x_chunks) pair (each one size, or dask-style sizes); got "
                          f"{chunks!r}")
    ty, tx = normalise_tile(tile)
    ys, xs = _edges(height, ty), _edges(width, tx)
    cy = _chunk_starts(chunks[0], height) if chunks is not None else None
    if chunks is not None:
        _chunk_starts(chunks[1], width)  # checked as the y chunks are; the order needs only the chunk rows
    if cy is None:
        order = [(y, x) for y in ys for x in xs]
    else:
        def key(yx: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int, int]:
            (y0, _), (x0, _) = yx
            return bisect.bisect_right(cy, y0) - 1, x0, y0

        order = sorted(((y, x) for y in ys for x in xs), key=key)
    tiles = tuple(make_tile(i, y0, y1, x0, x1, height, width, halo) for i, ((y0, y1), (x0, x1)) in enumerate(order))
    return TilePlan(height, width, (ty, tx), halo, tiles)


def default_tile(device_type: str, bands: int) -> int:
    """A tile side that keeps a tile's working set to tens of MB on CPU and a few hundred MB on GPU."""
    if device_type == "cuda":
        return 512
    return 128 if bands <= 256 else 64


def describe_plan(plan: TilePlan) -> str:
    """``4 tiles, up to 128 x 128 px (+3 px halo each side)``: a plan in a log line."""
    tiles = plan.tiles
    return (f"{len(tiles)} tiles, up to {max((t.y1 - t.y0 for t in tiles), default=0)} x "
            f"{max((t.x1 - t.x0 for t in tiles), default=0)} px (+{plan.halo} px halo each side)")


__all__ = ["Tile", "TilePlan", "default_tile", "describe_plan", "make_tile", "normalise_tile", "plan_tiles"]
