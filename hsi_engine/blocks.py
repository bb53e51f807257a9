"""Bounded cache of decoded scene blocks, so a chunk is decoded once for the tiles and halos that touch it.

A tile's window (tile plus halo) of a chunked store reaches into up to nine chunks, and every tile of a
chunk reads it again: without a cache a CPU tile of 128 in 128 x 128 chunks decodes each chunk nine times.
``BlockCache`` decodes a whole block (all bands of one spatial chunk) once, keeps the most recently used
ones in a fixed pool of slots allocated once (so long-lived blocks do not fragment the heap and the
process's memory stays at the pool's size), and copies windows out of them. Reader threads share it: a
block being decoded by one thread is waited for, not decoded again, and a slot being copied from is
pinned, never reused under a reader. Given a thread pool, the blocks of one window that no thread has yet
are decoded concurrently (the codecs release the GIL), so a reader is not bound by one core's decode speed.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait

import numpy as np

Block = tuple[int, int]


class BlockCache:
    """Windows ``(bands, ry1 - ry0, rx1 - rx0)`` of a chunked ``(band, y, x)`` source, cut from cached blocks.

    ``decode(y0, y1, x0, x1)`` returns one block's ``(bands, y1 - y0, x1 - x0)`` array; ``chunks`` are the
    source's ``(y sizes, x sizes)``; ``max_blocks`` slots are kept. The pool grows past that only when every
    slot is pinned at once (at most one window's blocks per reader thread) and then keeps its size.
    ``decoders``: an executor that decodes a window's missing blocks beside the calling thread (None: the
    calling thread decodes them one by one). Counters: ``decoded`` (blocks decoded) and ``hits`` (blocks
    served from the pool).
    """

    def __init__(self, decode: Callable[[int, int, int, int], np.ndarray],
                 chunks: tuple[Sequence[int], Sequence[int]], max_blocks: int, *,
                 decoders: Executor | None = None) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self._decode = decode
        self._decoders = decoders
        self._ys = list(itertools.accumulate([0, *chunks[0]]))
        self._xs = list(itertools.accumulate([0, *chunks[1]]))
        self._block_shape = (max(chunks[0]), max(chunks[1]))
        self.max_blocks = int(max_blocks)
        self._lock = threading.Lock()
        self._slots: list[np.ndarray] = []
        self._pins: list[int] = []
        self._where: collections.OrderedDict[Block, int] = collections.OrderedDict()  # LRU order, oldest first
        self._inflight: dict[Block, Future] = {}
        self.decoded = 0
        self.hits = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the slot pool."""
        return sum(s.nbytes for s in self._slots)

    def _span(self, starts: list[int], a: int, b: int) -> range:
        return range(bisect.bisect_right(starts, a) - 1, bisect.bisect_left(starts, b))

    def _free_slot(self, like: np.ndarray) -> int:
        """A slot to fill (lock held): a new one while the pool is below its size, else the least recently used
        unpinned one; a new one past the size only when every slot is pinned."""
        if len(self._slots) < self.max_blocks or all(self._pins):
            self._slots.append(np.empty((like.shape[0], *self._block_shape), dtype=like.dtype))
            self._pins.append(0)
            return len(self._slots) - 1
        for key, slot in self._where.items():
            if not self._pins[slot]:
                del self._where[key]
                return slot
        raise AssertionError("unreachable: an unpinned slot exists")

    def _shape(self, key: Block) -> tuple[int, int]:
        i, j = key
        return self._ys[i + 1] - self._ys[i], self._xs[j + 1] - self._xs[j]

    def _view(self, slot: int, key: Block) -> np.ndarray:
        h, w = self._shape(key)
        return self._slots[slot][:, :h, :w]

    def _fill(self, key: Block, fut: Future) -> int:
        """Decode block ``key`` (marked in flight as ``fut`` by the caller) into a slot, pinned once for the
        caller; ``fut`` resolves when the block is in the pool, or carries the error to the waiters."""
        i, j = key
        slot = None
        try:
            arr = self._decode(self._ys[i], self._ys[i + 1], self._xs[j], self._xs[j + 1])
            if arr.shape[1:] != self._shape(key):
                raise ValueError(f"block {key} decoded to {arr.shape[1:]} pixels, expected {self._shape(key)}")
            with self._lock:
                slot = self._free_slot(arr)
                self._pins[slot] += 1  # nobody can take it while it is being filled
            self._view(slot, key)[...] = arr
        except BaseException as e:  # waiters get the error instead of waiting for ever
            with self._lock:
                del self._inflight[key]
                if slot is not None:
                    self._pins[slot] -= 1
            fut.set_exception(e)
            raise
        with self._lock:
            self._where[key] = slot
            del self._inflight[key]
            self.decoded += 1
        fut.set_result(None)
        return slot

    def _claim(self, keys: Sequence[Block]) -> dict[Block, Future]:
        """The blocks of ``keys`` that are neither in the pool nor being decoded, marked in flight for the
        caller to decode (waiters of another thread then wait for them instead of decoding them too)."""
        owned = {}
        with self._lock:
            for key in keys:
                if key not in self._where and key not in self._inflight:
                    owned[key] = self._inflight[key] = Future()
        return owned

    def _acquire(self, key: Block) -> int:
        """The slot of block ``key``, pinned (decoded here or by another thread): release it after use."""
        while True:
            with self._lock:
                slot = self._where.get(key)
                if slot is not None:
                    self._where.move_to_end(key)
                    self._pins[slot] += 1
                    self.hits += 1
                    return slot
                fut = self._inflight.get(key)
                owner = fut is None
                if owner:
                    fut = self._inflight[key] = Future()
            if not owner:
                fut.result()  # raises the owner's error; else the block is in the pool now: look again
                continue
            return self._fill(key, fut)

    def _fill_all(self, owned: dict[Block, Future]) -> dict[Block, int]:
        """Decode the claimed blocks, on the decoder pool beside this thread; their slots come back pinned. On
        an error every slot filled is released and the first error raised."""
        keys = list(owned)
        jobs = [self._decoders.submit(self._fill, k, owned[k]) for k in keys[1:]]
        held, error = {}, None
        try:
            held[keys[0]] = self._fill(keys[0], owned[keys[0]])
        except BaseException as e:  # noqa: BLE001 - raised below, once the pool's jobs are done
            error = e
        wait(jobs)
        for k, job in zip(keys[1:], jobs):
            if job.exception() is None:
                held[k] = job.result()
            elif error is None:
                error = job.exception()
        if error is not None:
            for slot in held.values():
                self._release(slot)
            raise error
        return held

    def _release(self, slot: int) -> None:
        with self._lock:
            self._pins[slot] -= 1

    def __call__(self, ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        keys = [(i, j) for i in self._span(self._ys, ry0, ry1) for j in self._span(self._xs, rx0, rx1)]
        held: dict[Block, int] = {}
        if self._decoders is not None:
            owned = self._claim(keys)
            if owned:
                held = self._fill_all(owned)
        out = None
        try:
            for key in keys:
                slot = held.pop(key, None)
                if slot is None:
                    slot = self._acquire(key)
                try:
                    i, j = key
                    y0, y1 = max(ry0, self._ys[i]), min(ry1, self._ys[i + 1])
                    x0, x1 = max(rx0, self._xs[j]), min(rx1, self._xs[j + 1])
                    b = self._slots[slot]
                    if out is None:
                        out = np.empty((b.shape[0], ry1 - ry0, rx1 - rx0), dtype=b.dtype)
                    out[:, y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = \
                        b[:, y0 - self._ys[i]:y1 - self._ys[i], x0 - self._xs[j]:x1 - self._xs[j]]
                finally:
                    self._release(slot)
        finally:
            for slot in held.values():  # only left after an error
                self._release(slot)
        return out


__all__ = ["BlockCache"]
