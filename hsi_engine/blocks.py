"""Bounded cache of decoded scene blocks, so a chunk is decoded once for every tile and halo that touches it.

A tile's window (tile plus halo) of a chunked store reaches into up to nine chunks, and the tiles of one
chunk each read it again: a CPU tile of 128 in 256 x 256 chunks decoded every chunk about nine times, and
the engine ran 25 % slower from zarr than from memory. ``BlockCache`` decodes a whole block (all bands of
one spatial chunk) once, keeps recently used blocks up to a byte budget (least recently used out first), and
cuts windows from them. Reader threads share it; a block being decoded by one thread is waited for, not
decoded again. Memory is the budget plus the blocks readers hold, whatever the scene size.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

Block = tuple[int, int]


def _starts(sizes: Sequence[int]) -> list[int]:
    return list(itertools.accumulate([0, *sizes]))


class BlockCache:
    """Windows ``(bands, ry1 - ry0, rx1 - rx0)`` of a chunked ``(band, y, x)`` source, cut from cached blocks.

    ``decode(y0, y1, x0, x1)`` returns one block's ``(bands, y1 - y0, x1 - x0)`` array; ``chunks`` are the
    source's ``(y sizes, x sizes)``; ``max_bytes`` bounds the blocks kept. Counters ``decoded`` and ``hits``
    say how often a block was decoded and how often a cached one served a window.
    """

    def __init__(self, decode: Callable[[int, int, int, int], np.ndarray],
                 chunks: tuple[Sequence[int], Sequence[int]], max_bytes: int) -> None:
        self._decode = decode
        self._ys, self._xs = _starts(chunks[0]), _starts(chunks[1])
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._blocks: collections.OrderedDict[Block, np.ndarray] = collections.OrderedDict()
        self._inflight: dict[Block, Future] = {}
        self._bytes = 0
        self.decoded = 0
        self.hits = 0

    def _span(self, starts: list[int], a: int, b: int) -> range:
        import bisect

        return range(bisect.bisect_right(starts, a) - 1, bisect.bisect_left(starts, b))

    def block(self, key: Block) -> np.ndarray:
        """Block ``(chunk row, chunk column)``, decoded by this thread or another one, at most once while cached."""
        with self._lock:
            arr = self._blocks.get(key)
            if arr is not None:
                self._blocks.move_to_end(key)
                self.hits += 1
                return arr
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = self._inflight[key] = Future()
        if not owner:
            return fut.result()
        i, j = key
        try:
            arr = self._decode(self._ys[i], self._ys[i + 1], self._xs[j], self._xs[j + 1])
        except BaseException as e:
            with self._lock:
                del self._inflight[key]
            fut.set_exception(e)
            raise
        with self._lock:
            del self._inflight[key]
            self.decoded += 1
            if arr.nbytes <= self.max_bytes:
                self._blocks[key] = arr
                self._bytes += arr.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._blocks.popitem(last=False)
                    self._bytes -= old.nbytes
        fut.set_result(arr)
        return arr

    def __call__(self, ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        rows, cols = self._span(self._ys, ry0, ry1), self._span(self._xs, rx0, rx1)
        if len(rows) == 1 and len(cols) == 1:  # inside one block: a view (readers never write to it)
            i, j = rows[0], cols[0]
            b = self.block((i, j))
            return b[:, ry0 - self._ys[i]:ry1 - self._ys[i], rx0 - self._xs[j]:rx1 - self._xs[j]]
        out = None
        for i in rows:
            y0, y1 = max(ry0, self._ys[i]), min(ry1, self._ys[i + 1])
            for j in cols:
                x0, x1 = max(rx0, self._xs[j]), min(rx1, self._xs[j + 1])
                b = self.block((i, j))
                if out is None:
                    out = np.empty((b.shape[0], ry1 - ry0, rx1 - rx0), dtype=b.dtype)
                out[:, y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = \
                    b[:, y0 - self._ys[i]:y1 - self._ys[i], x0 - self._xs[j]:x1 - self._xs[j]]
        return out


__all__ = ["BlockCache"]
